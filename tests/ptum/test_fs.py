"""ptum.fs, the one filesystem layer, on a local folder and on a URI scheme served by a pyarrow
filesystem without local paths (the code path of gs:// and s3://)."""
import os

import pyarrow.fs as pafs
import pytest

from ptum import fs


@pytest.fixture(params=["local", "uri", "fsspec"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    if request.param == "fsspec":       # a scheme pyarrow does not know: through fsspec
        yield f"memory://bucket-{os.getpid()}-{tmp_path.name}"
        return
    (tmp_path / "store").mkdir()
    fs.register("teststore", pafs.SubTreeFileSystem(str(tmp_path / "store"), pafs.LocalFileSystem()))
    yield "teststore://store-bucket"
    fs.unregister("teststore")


def test_write_read_list_glob_remove(root):
    a, b, hidden = fs.join(root, "d", "a.csv"), fs.join(root, "d", "sub", "b.csv"), fs.join(root, "d", ".x")
    fs.write_bytes(a, b"1,2\n")
    fs.write_bytes(b, b"3")
    fs.write_bytes(hidden, b"")
    assert fs.read_bytes(a) == b"1,2\n" and fs.size(a) == 4
    assert fs.isfile(a) and fs.isdir(fs.join(root, "d")) and not fs.exists(fs.join(root, "nope"))
    assert fs.listdir(fs.join(root, "d")) == [a]                       # files only, no hidden ones
    assert fs.glob(fs.join(root, "d")) == [a]
    assert fs.glob(a) == [a]
    assert fs.glob(fs.join(root, "d", "*.csv")) == [a]
    deeper = fs.join(root, "d", "sub", "deeper", "c.csv")
    fs.write_bytes(deeper, b"")
    assert fs.glob(fs.join(root, "d", "*", "*.csv")) == [b]        # one folder level per *
    assert fs.glob(fs.join(root, "d", "**", "*.csv")) == [a, b, deeper]
    assert fs.glob(fs.join(root, "d", "*.tsv")) == [] and fs.glob(fs.join(root, "missing")) == []
    with fs.open_input(a) as f:
        f.seek(2)
        assert f.read() == b"2\n"
    fs.remove(fs.join(root, "d"))
    assert not fs.exists(a) and not fs.exists(fs.join(root, "d"))
    fs.remove(fs.join(root, "d"))                                      # absent: nothing to do


def test_a_failed_write_leaves_no_file(root):
    path = fs.join(root, "out", "f.bin")
    fs.write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with fs.writer(path) as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    if fs.is_local(root):       # local: the old file stays, no temporary file is left behind
        assert fs.read_bytes(path) == b"old"
        assert os.listdir(os.path.dirname(path)) == ["f.bin"]
    else:                       # an object store: no half-written object
        assert not fs.exists(path)


def test_paths_resolve():
    local, p = fs.resolve("rel/x")
    assert isinstance(local, pafs.LocalFileSystem) and p == os.path.abspath("rel/x")
    assert fs.resolve("file:///tmp/y")[1] == "/tmp/y"
    assert fs.join("gs://b/", "x", "y.parquet") == "gs://b/x/y.parquet"
    gcs, p = fs.resolve("gs://bkt/a/b/")         # a client is built, no request is made
    assert isinstance(gcs, pafs.GcsFileSystem) and p == "bkt/a/b"
    assert fs.resolve("gs://bkt/c")[0] is gcs    # one client per bucket
    assert fs._uri("gs://bkt/*.csv", "bkt/x.csv") == "gs://bkt/x.csv"
    assert fs.is_local("/a") and fs.is_local("file:///a") and not fs.is_local("s3://b/a")


def test_an_unknown_scheme_is_one_clear_error():
    with pytest.raises(ValueError, match="nosuchscheme://: no filesystem for this scheme"):
        fs.exists("nosuchscheme://b/x")
