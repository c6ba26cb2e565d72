"""The one filesystem layer: local paths and URIs (gs://, s3://, hdfs://, file://; other schemes
through fsspec, e.g. az://, memory://; or a scheme registered with `register`), all through
`pyarrow.fs`. The data path (input logs, datasets,
staging, dead letters, manifests, embedding exports) reads and writes through here; nothing
else branches on "://". (Keras and TensorFlow open model files through their own filesystems.)

Writes appear whole: `write_bytes` / `writer` write a sibling temporary file and rename it
into place on a local disk; on an object store an object becomes visible only when its upload
completes, so the stream is written in place. `output_lock` (in `ptum.data.contracts`) and the
commit markers (a dataset's manifest, a model's metadata) build on these.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import threading
from typing import Dict, Iterator, List, Tuple

import pyarrow as pa
import pyarrow.fs as pafs

_LOCAL = pafs.LocalFileSystem(use_mmap=True)   # Arrow files staged by the tokenizer map zero-copy
_REGISTERED: Dict[str, pafs.FileSystem] = {}
_CACHE: Dict[Tuple[str, str], Tuple[pafs.FileSystem, bool]] = {}
_LOCK = threading.Lock()
_WILDCARDS = "*?["


def register(scheme: str, filesystem: pafs.FileSystem) -> None:
    """Serve `scheme://a/b` from `filesystem` (path `a/b` there): an object store pyarrow does
    not know by URI, or a test's stand-in for one. Registration is per process (workers of a
    distributed runner need it too)."""
    _REGISTERED[scheme] = filesystem


def unregister(scheme: str) -> None:
    _REGISTERED.pop(scheme, None)


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def resolve(path: str) -> Tuple[pafs.FileSystem, str]:
    """(filesystem, its path) for a local path or URI."""
    if "://" not in path:
        return _LOCAL, os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    if scheme in _REGISTERED:
        return _REGISTERED[scheme], rest.rstrip("/")
    if scheme == "file":
        return _LOCAL, rest
    fs, bucket_in_path = _client(scheme, rest.split("/", 1)[0])
    inner = rest if bucket_in_path else "/" + rest.partition("/")[2]
    return fs, inner.rstrip("/") or "/"


def _client(scheme: str, bucket: str) -> Tuple[pafs.FileSystem, bool]:
    """One client per bucket or host (S3/GCS clients are costly to build), and whether its
    paths start with the bucket (gs://, s3://) or not (hdfs://host:port/path)."""
    with _LOCK:
        key = (scheme, bucket)
        if key not in _CACHE:
            try:
                fs, inner = pafs.FileSystem.from_uri(f"{scheme}://{bucket}/x")
                _CACHE[key] = (fs, inner.lstrip("/") == f"{bucket}/x")
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                _CACHE[key] = (_fsspec(scheme), True)
        return _CACHE[key]


def _fsspec(scheme: str) -> pafs.FileSystem:
    """A scheme pyarrow does not know (az://, abfs://, memory://, ...), through fsspec."""
    try:
        import fsspec
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))
    except (ImportError, ValueError) as e:
        raise ValueError(f"{scheme}://: no filesystem for this scheme (pyarrow has gs, s3 and hdfs; fsspec: "
                         f"{e}); install its fsspec package or register one with ptum.fs.register") from None


def _uri(path: str, inner: str) -> str:
    """`inner` (a path on the filesystem `path` resolves to) written in `path`'s own form."""
    if "://" not in path:
        return inner
    scheme, rest = path.split("://", 1)
    if scheme in _REGISTERED or scheme == "file" or _client(scheme, rest.split("/", 1)[0])[1]:
        return f"{scheme}://{inner.lstrip('/') if scheme != 'file' else inner}"
    return f"{scheme}://{rest.split('/', 1)[0]}{inner}"


def join(base: str, *parts: str) -> str:
    if "://" in base:
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def _info(path: str) -> pafs.FileInfo:
    fs, p = resolve(path)
    return fs.get_file_info(p)


def exists(path: str) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def isdir(path: str) -> bool:
    return _info(path).type == pafs.FileType.Directory


def isfile(path: str) -> bool:
    return _info(path).type == pafs.FileType.File


def size(path: str) -> int:
    info = _info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{path}: no such file")
    return info.size


def listdir(path: str) -> List[str]:
    """The files (not folders, not hidden) directly in a folder, sorted, as paths."""
    fs, p = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(join(path, i.base_name) for i in infos
                  if i.type == pafs.FileType.File and not i.base_name.startswith("."))


def glob(pattern: str) -> List[str]:
    """A file, a folder (its files), or a glob pattern -> sorted matching files."""
    info = _info(pattern) if not any(c in pattern for c in _WILDCARDS) else None
    if info is not None:
        if info.type == pafs.FileType.File:
            return [pattern]
        return listdir(pattern) if info.type == pafs.FileType.Directory else []
    if "://" not in pattern:
        import glob as _glob
        return sorted(p for p in _glob.glob(pattern, recursive=True) if os.path.isfile(p))
    fs, p = resolve(pattern)
    parts = p.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in _WILDCARDS))
    base = "/".join(parts[:fixed])
    deep = "**" in p or len(parts) - fixed > 1
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=deep, allow_not_found=True))
    return sorted(_uri(pattern, i.path) for i in infos
                  if i.type == pafs.FileType.File and _matches(i.path.lstrip("/"), p.lstrip("/")))


def _matches(path: str, pattern: str) -> bool:
    """Glob semantics: a wildcard stays within one path component, except `**`."""
    if "**" in pattern:         # any depth, none included (as glob.glob(recursive=True))
        return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))
    names, parts = path.split("/"), pattern.split("/")
    return len(names) == len(parts) and all(fnmatch.fnmatchcase(n, q) for n, q in zip(names, parts))


def open_input(path: str):
    """A seekable binary file (the bytes as stored: no decompression)."""
    fs, p = resolve(path)
    return fs.open_input_file(p)


def read_bytes(path: str) -> bytes:
    with open_input(path) as f:
        return f.read()


def temp_path(path: str) -> str:
    """A sibling temporary name unique to this process and thread (two threads of one worker
    may write the same file at once: runners retry or recompute work); renamed onto `path`
    when whole."""
    return f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"


@contextlib.contextmanager
def writer(path: str, fsync: bool = False) -> Iterator[object]:
    """A binary output stream whose file appears at `path` only when the block ends without an
    error (local: a temporary file renamed into place, the old file kept on error; object stores:
    the upload completes on success, and what was written is deleted on error)."""
    fs, p = resolve(path)
    if not is_local(path):
        if "/" in p:
            fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        f = fs.open_output_stream(p)
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):   # no half object: closing would publish it
                f.close()
                fs.delete_file(p)
            raise
        f.close()
        return
    os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
    tmp = temp_path(p)
    try:
        with open(tmp, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes, fsync: bool = False) -> None:
    with writer(path, fsync=fsync) as f:
        f.write(data)


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def remove(path: str) -> None:
    """Remove a file or a folder tree; nothing when it is not there."""
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif info.type != pafs.FileType.NotFound:
        fs.delete_file(p)


# ------------------------------------------------------------------ replacing a whole folder
STAGE_MARK = ".ptum-new-"


def _exchange(a: str, b: str) -> bool:
    """Swap two local paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    C library or the filesystem lacks it."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), b)


def _stale_stages(target: str) -> List[str]:
    parent, name = os.path.split(os.path.abspath(target))
    prefix = f".{name}{STAGE_MARK}"
    out = []
    for entry in os.listdir(parent) if os.path.isdir(parent) else []:
        if entry.startswith(prefix):
            pid = entry[len(prefix):].split("-")[0]
            if not pid.isdigit() or not os.path.exists(f"/proc/{pid}") or int(pid) == os.getpid():
                out.append(os.path.join(parent, entry))
    return out


@contextlib.contextmanager
def staged_dir(target: str, carry: Tuple[str, ...] = ()) -> Iterator[str]:
    """A folder to write the next version of the folder `target` into. When the block ends
    without an error the new folder replaces `target` in one step (renameat2 RENAME_EXCHANGE;
    where the filesystem lacks it, two renames with a moment in between when `target` is
    absent), and the previous version is deleted; on an error, a kill or a Ctrl-C, `target` is
    left as it was (a killed run's stage, a hidden sibling `.<name>.ptum-new-<pid>`, is removed
    by the next run). Entries named in `carry` (e.g. checkpoints) and the output lock file are
    moved from `target` into the new folder just before the swap (the lock file keeps its
    inode, so its holder still holds it). Object stores have no rename: the block gets
    `target` itself, and its writer commits with a marker written last (a manifest)."""
    if not is_local(target):
        yield target
        return
    target = os.path.abspath(target)
    for stale in _stale_stages(target):
        import shutil
        shutil.rmtree(stale, ignore_errors=True)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    stage = os.path.join(parent, f".{name}{STAGE_MARK}{os.getpid()}-{threading.get_ident()}")
    os.makedirs(stage)
    import shutil
    try:
        yield stage
        if os.path.isdir(target):
            for entry in (*carry, ".ptum.lock"):
                src = os.path.join(target, entry)
                if os.path.lexists(src):
                    dst = os.path.join(stage, entry)
                    if os.path.isdir(dst) and not os.path.islink(dst):
                        shutil.rmtree(dst)
                    os.replace(src, dst)
            if not _exchange(stage, target):
                old = stage + ".old"
                os.rename(target, old)
                os.rename(stage, target)
                stage = old
        else:
            os.rename(stage, target)
            stage = None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
