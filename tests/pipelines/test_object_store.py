"""The data path on a URI filesystem (what gs:// and s3:// take): logs read, a dataset written
and read back, a model pre-trained from it and its users' embeddings exported, all through
`ptum.fs` with a registered scheme served by a pyarrow filesystem that knows no local paths.
Everything must equal the same run on local paths."""
import os

import numpy as np
import pyarrow.fs as pafs
import pytest

from ptum import fs
from ptum.data import contracts
from ptum.data.ingest import plan, reference, job

STORE = "teststore://bucket"


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_logs):
    logs, _ = sample_logs
    root = tmp_path_factory.mktemp("object_store")
    fs.register("teststore", pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem()))
    with open(os.path.join(logs, "events.csv"), "rb") as f:
        header, *lines = f.read().split(b"\n")
    half = len(lines) // 2
    for i, part in enumerate((lines[:half], lines[half:])):      # two files, read by a glob
        fs.write_bytes(f"{STORE}/logs/events-{i}.csv", b"\n".join([header] + part))
        with open(os.path.join(str(root), f"local-events-{i}.csv"), "wb") as f:
            f.write(b"\n".join([header] + part))
    with open(os.path.join(logs, "items.csv"), "rb") as f:
        fs.write_bytes(f"{STORE}/logs/items.csv", f.read())
    yield root, logs
    fs.unregister("teststore")


def _opts(inputs, items, output, **kw):
    return plan.TokenizeOptions(inputs=inputs, format="csv", output=output, items_catalog=items, num_shards=2, **kw)


def _rows(root, split):
    return sorted(contracts.open_dataset(root).read_split(split).to_pylist(), key=lambda r: r["user_id"])


@pytest.fixture(scope="module")
def datasets(store):
    root, logs = store
    local = str(root / "local-data")
    m_local = reference.run(_opts([str(root / "local-events-*.csv")], os.path.join(logs, "items.csv"), local))
    remote = f"{STORE}/data"
    m_remote = job.run(_opts([f"{STORE}/logs/events-*.csv"], f"{STORE}/logs/items.csv", remote,
                             split_bytes=20_000))                   # byte ranges read through seeks
    return local, m_local, remote, m_remote


def test_tokenize_reads_and_writes_an_object_store(store, datasets):
    local, m_local, remote, m_remote = datasets
    assert m_remote["vocab_hash"] == m_local["vocab_hash"]
    assert m_remote["counts"] == m_local["counts"] and m_remote["counts"]["events_dead_lettered"]["total"] > 0
    for split in ("train", "valid", "test"):
        assert _rows(remote, split) == _rows(local, split)
    assert all(f["path"].startswith(f"{STORE}/logs/events-") for f in m_remote["inputs"])
    assert not fs.exists(f"{STORE}/data/.staging")                  # staging removed at commit
    root, _ = store
    assert (root / "bucket" / "data" / contracts.MANIFEST).is_file()   # in the store, not a local "teststore:"
    assert not os.path.exists("teststore:")
    # The reference (no Beam) reads the store too, and a second run replaces the first.
    again = reference.run(_opts([f"{STORE}/logs/events-*.csv"], f"{STORE}/logs/items.csv", remote))
    assert again["counts"] == m_local["counts"]


def test_pretrain_from_and_export_to_an_object_store(store, datasets, tmp_path):
    from ptum.config import PTUMConfig
    from ptum.serving.export_embeddings import read_embeddings, run
    from ptum.serving.saved_model import export_saved_model
    from ptum.training.pretrain import pretrain

    local, _, remote, _ = datasets
    cfg = PTUMConfig.load(None, ["model.embedding_dim=16", "model.num_blocks=1", "model.num_heads=1",
                                 "model.max_len=12", "train.epochs=1", "objective.num_negatives=16"])
    pretrain(remote, str(tmp_path / "model"), cfg, log=lambda s: None)
    serving = export_saved_model(str(tmp_path / "model"), str(tmp_path / "serving"), version=1)
    m = run(serving, remote, f"{STORE}/emb", batch_rows=64)
    run(serving, local, str(tmp_path / "emb"), batch_rows=64)
    a, b = read_embeddings(f"{STORE}/emb"), read_embeddings(str(tmp_path / "emb"))
    assert m["counts"]["users"] == a.num_rows == b.num_rows > 0
    assert (store[0] / "bucket" / "emb" / contracts.MANIFEST).is_file() and not os.path.exists("teststore:")
    order_a, order_b = np.argsort(a.column("user_id").to_pylist()), np.argsort(b.column("user_id").to_pylist())
    assert np.array(a.column("user_id").to_pylist())[order_a].tolist() == \
        np.array(b.column("user_id").to_pylist())[order_b].tolist()
    ea, eb = np.stack(a.column("embedding").to_pylist()), np.stack(b.column("embedding").to_pylist())
    assert np.abs(ea[order_a] - eb[order_b]).max() <= 1e-6
