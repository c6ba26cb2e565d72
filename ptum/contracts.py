"""Data contracts shared by every stage: reserved token ids, the sequence-dataset
layout, the vocabulary hash and the manifest (the dataset's commit marker).

Everything here is pure Python + pyarrow so that readers (training, evaluation,
export) and writers (the Beam tokenizer) agree without importing Beam or TensorFlow.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ptum import fs

# Reserved item token ids. Real items start at FIRST_ITEM_ID, in vocabulary order
# (descending count, then item id), so the ids are stable for a given vocabulary.
PAD_ID = 0
MASK_ID = 1
OOV_ID = 2
FIRST_ITEM_ID = 3
NUM_RESERVED_ITEM_IDS = FIRST_ITEM_ID

# Behavior-type ids: 0 is padding, 1 an unknown/absent behavior type.
BEHAVIOR_PAD_ID = 0
BEHAVIOR_UNKNOWN_ID = 1
FIRST_BEHAVIOR_ID = 2

# Title-word ids for the text-aware behavior encoder.
WORD_PAD_ID = 0
WORD_OOV_ID = 1
FIRST_WORD_ID = 2

MANIFEST = "manifest.json"
# 2: the vocab hash covers items, behaviors and title words (1: items only); format-1
# datasets must be tokenized again (their hash cannot be compared with a model's).
FORMAT_VERSION = 2
SEQUENCES_DIR = "sequences"
VOCAB_DIR = "vocab"
DEADLETTER_DIR = "deadletter"
ITEMS_VOCAB = "items.parquet"
BEHAVIORS_VOCAB = "behaviors.parquet"
WORDS_VOCAB = "words.parquet"
CATALOG = "catalog.parquet"
LABELS_DIR = "labels"

SPLIT_SCHEMES = {
    "leave-one-out": ("train", "valid", "test"),
    "time": ("train", "test"),
    "user-hash": ("pretrain", "finetune"),
    "window": ("train", "valid", "test"),
}

# Dead-letter reasons, in one place so tests and docs enumerate the same set.
DEADLETTER_REASONS = (
    "wrong_column_count",
    "unparsable_timestamp",
    "timestamp_out_of_range",
    "empty_user_id",
    "empty_item_id",
    "undecodable_bytes",
    "nul_byte",
    "line_too_long",
    "truncated_input",
    "malformed_json",
    "unparsable_value",
)


LOCK_FILE = ".ptum.lock"


class OutputBusyError(Exception):
    """Another run is writing into the same output folder."""


def output_folder_problem(output: str) -> Optional[str]:
    """Why `output` cannot be an output folder (a file is in the way), or None. Cheap, so the
    CLI asks before importing Beam or TensorFlow."""
    if fs.is_local(output) and fs.isfile(output):
        return f"{output}: is a file; the output must be a folder"
    return None


@contextlib.contextmanager
def output_lock(output: str, what: str, error=OutputBusyError, wait: bool = False):
    """Hold an exclusive lock on a local output folder for the length of a run.

    Two runs writing one folder would delete each other's staging and commit markers and
    both report success; the second is refused instead, with one line naming the holder.
    The lock (flock on `output/.ptum.lock`) is released by the OS when its process ends,
    so a killed run never leaves a stale lock. Object-store outputs (`gs://`, `s3://`) have
    no such lock: there the last run to write its commit marker wins.
    `error`: the exception class raised when the folder is busy (each caller's own).
    `wait`: block until the holder is done instead (the pusher: versions are chosen and
    renamed into place one pusher at a time)."""
    if not fs.is_local(output):
        yield
        return
    import fcntl
    import socket

    problem = output_folder_problem(output)
    if problem:
        raise error(problem)
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as e:
        raise error(f"{output}: cannot create the output folder ({e.strerror or e})") from None
    fd = os.open(os.path.join(output, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
        os.close(fd)
        raise error(f"{output}: another ptum run is writing here ({holder}); wait for it to end "
                              "or choose another output folder")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what}, pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class DatasetError(Exception):
    """A sequence dataset is missing, uncommitted or does not match what reads it."""


def sequence_schema():
    """Arrow schema of one sequence row (every row is self-contained)."""
    import pyarrow as pa

    return pa.schema([
        ("user_id", pa.string()),
        ("item_ids", pa.list_(pa.int32())),
        ("timestamps", pa.list_(pa.int64())),
        ("behavior_ids", pa.list_(pa.int32())),
        ("values", pa.list_(pa.float32())),
        ("length", pa.int32()),
    ])


def deadletter_schema():
    import pyarrow as pa

    return pa.schema([
        ("file", pa.string()),
        ("row", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.binary()),
    ])


def vocab_hash(item_ids: Sequence[str], token_ids: Sequence[int]) -> str:
    """Hash of the (item id, token id) pairs only: counts do not change it, so a
    dataset tokenized with a frozen vocabulary matches the model that owns it."""
    h = hashlib.sha256()
    for item, tok in sorted(zip(item_ids, (int(t) for t in token_ids)), key=lambda p: p[1]):
        h.update(str(tok).encode())
        h.update(b"\x1f")
        h.update(item.encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:32]


def dataset_vocab_hash(item_ids: Sequence[str], token_ids: Sequence[int], behaviors: Sequence[str] = (),
                       behavior_ids: Sequence[int] = (), words: Sequence[str] = (),
                       word_ids: Sequence[int] = ()) -> Tuple[str, Dict[str, str]]:
    """(the dataset's vocab hash, per-vocabulary hashes). The dataset hash covers every
    vocabulary a model depends on (items, behavior types, title words), ids only, so that
    the same ids mean the same things wherever the hash matches (format version 2)."""
    parts = {"items": vocab_hash(item_ids, token_ids), "behaviors": vocab_hash(behaviors, behavior_ids),
             "words": vocab_hash(words, word_ids)}
    h = hashlib.sha256("|".join(f"{k}={v}" for k, v in sorted(parts.items())).encode())
    return h.hexdigest()[:32], parts


def stable_user_hash(user_id: str) -> float:
    """A stable value in [0, 1) for a user id (the `user-hash` split)."""
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


@dataclass
class SequenceDataset:
    """A committed sequence dataset (its manifest exists and parsed)."""

    root: str
    manifest: dict

    @property
    def vocab_hash(self) -> str:
        return self.manifest["vocab_hash"]

    @property
    def splits(self) -> Tuple[str, ...]:
        return tuple(self.manifest["splits"].keys())

    @property
    def num_item_tokens(self) -> int:
        """Size of the item embedding table (reserved ids + vocabulary)."""
        return int(self.manifest["counts"]["items"]) + NUM_RESERVED_ITEM_IDS

    @property
    def num_behavior_tokens(self) -> int:
        return int(self.manifest["counts"].get("behaviors", 0)) + FIRST_BEHAVIOR_ID

    @property
    def has_time(self) -> bool:
        return bool(self.manifest.get("has_time", True))

    def path(self, *parts: str) -> str:
        return fs.join(self.root, *parts)

    def split_files(self, split: str) -> List[str]:
        if split not in self.manifest["splits"]:
            raise DatasetError(
                f"{self.root}: no split {split!r}; this dataset has {sorted(self.manifest['splits'])}")
        return [self.path(SEQUENCES_DIR, f) for f in self.manifest["splits"][split]["files"]]

    def read_split(self, split: str, columns: Optional[List[str]] = None):
        """The split as one pyarrow Table (rows in file order)."""
        import pyarrow as pa

        files = self.split_files(split)
        tables = [read_parquet(f, columns) for f in files]
        if not tables:
            schema = sequence_schema()
            if columns:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables)

    def read_items_vocab(self):
        return read_parquet(self.path(VOCAB_DIR, ITEMS_VOCAB))

    def read_vocab_table(self, name: str):
        path = self.path(VOCAB_DIR, name)
        if not fs.exists(path):
            return None
        return read_parquet(path)


def read_parquet(path: str, columns: Optional[Sequence[str]] = None):
    """A Parquet file, or some of its columns, local or on an object store (see ptum.fs)."""
    import pyarrow.parquet as pq

    with fs.open_input(path) as f:
        return pq.read_table(f, columns=columns)



def open_dataset(root: str) -> SequenceDataset:
    """Open a committed dataset; refuse one without a manifest (not committed)."""
    mpath = fs.join(root, MANIFEST)
    if not fs.exists(mpath):
        if not fs.exists(root):
            raise DatasetError(f"{root}: no such dataset directory")
        raise DatasetError(
            f"{root}: no {MANIFEST}: the dataset was not committed (the tokenize run failed, "
            "was killed, or is still running)")
    manifest = json.loads(fs.read_bytes(mpath).decode("utf-8"))
    version = int(manifest.get("format_version", 1))
    if version < FORMAT_VERSION:
        raise DatasetError(
            f"{root}: dataset format {version} is older than {FORMAT_VERSION} (its vocab hash covers items "
            "only); run ptum tokenize again (with --vocab-from for a frozen vocabulary)")
    return SequenceDataset(root=root, manifest=manifest)


def check_invariants(manifest: dict) -> List[str]:
    """The manifest's count invariants; returns the violated ones (empty when fine)."""
    c = manifest["counts"]
    problems = []
    dl = c["events_dead_lettered"]
    if c["events_read"] != c["events_accepted"] + dl["total"] + c["duplicates_dropped"]:
        problems.append("events_read != events_accepted + events_dead_lettered + duplicates_dropped")
    if sum(dl["by_reason"].values()) != dl["total"]:
        problems.append("dead letters by reason do not add up to the total")
    if c["events_accepted"] != c["events_in_sequences"] + c["events_truncated"]:
        problems.append("events_accepted != events_in_sequences + events_truncated")
    return problems


def write_json_atomic(path: str, obj: dict) -> None:
    """Write JSON so that readers see the old file or the whole new one."""
    fs.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"), fsync=True)


def file_fingerprint(path: str, size: int, head: bytes, tail: bytes) -> Dict[str, object]:
    h = hashlib.sha256()
    h.update(head)
    h.update(tail)
    return {"path": path, "size": size, "sha256_head_tail": h.hexdigest()}
