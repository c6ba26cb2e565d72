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
# 3: the manifest is sealed with its own digest and counts users per split (users_train_only,
# users_eval_only, users_test_only; file_rows per split file).
FORMAT_VERSION = 3
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

# Every user of a dataset is in at least one split. A user category below names users left out
# of some splits (and why), so that each split's row count follows from the user count:
#   rows(split) = users - sum(counts[c] for c in USERS_LEFT_OUT[scheme][split]).
#   users_train_only: too few behaviors for a target or window: the whole history is in train
#                     (leave-one-out: < 3 behaviors; window W: <= W; time cut: no event at or
#                     after the cut);
#   users_eval_only:  window W: W+1..2W behaviors, none outside the two windows: valid and test;
#   users_test_only:  time cut: every event at or after the cut: a test row whose history is
#                     empty (the target is its first event).
USER_CATEGORIES = ("users_train_only", "users_eval_only", "users_test_only")
USERS_LEFT_OUT = {
    "leave-one-out": {"train": (), "valid": ("users_train_only",), "test": ("users_train_only",)},
    "window": {"train": ("users_eval_only",), "valid": ("users_train_only",), "test": ("users_train_only",)},
    "time": {"train": ("users_test_only",), "test": ("users_train_only",)},
    "user-hash": {},   # a partition: rows(pretrain) + rows(finetune) = users
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


# What each kind of output folder may hold (besides the lock file, hidden stages and
# temporary files): a run replaces the whole folder, so a folder holding anything else (or an
# output of another kind) is refused before anything is touched.
OUTPUT_ENTRIES = {
    "dataset": {MANIFEST, SEQUENCES_DIR, VOCAB_DIR, DEADLETTER_DIR, LABELS_DIR, ".staging"},
    "model": {"metadata.json", "encoder.keras", "config.json", "history.json", VOCAB_DIR, "checkpoints",
              "tensorboard"},
    "embeddings": {MANIFEST, "embeddings", "saved_model", "items.parquet"},   # ptum.serving.export_embeddings
    "finetuned": {"model.keras", "metrics.json", "metadata.json"},
    "semantic_ids": {MANIFEST, "codes.parquet", "codebooks.parquet", "deadletter.parquet", "report.json", "report.md",
                     "codebook_usage.png"},
}
_KIND_NAMES = {"dataset": "sequence dataset (ptum tokenize)", "model": "pre-trained model (ptum pretrain)",
               "embeddings": "embedding export (ptum export-embeddings)",
               "finetuned": "fine-tuned model (ptum finetune)", "savedmodel": "SavedModel",
               "semantic_ids": "Semantic ID artifact (ptum semantic-ids)"}


def output_kind(path: str) -> Optional[str]:
    """What a local folder holds, from its commit marker: dataset, model, embeddings,
    finetuned (ptum finetune), savedmodel, semantic_ids; None when it has no marker (empty, new, or an
    unfinished run's)."""
    def load(name):
        try:
            with open(os.path.join(path, name), "rb") as f:
                value = json.loads(f.read().decode("utf-8"))
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return "savedmodel"
    if os.path.exists(os.path.join(path, MANIFEST)):
        m = load(MANIFEST)
        if m.get("kind") == "semantic_ids":
            return "semantic_ids"
        return "embeddings" if "saved_model_sha256" in m or m.get("kind") == "embeddings" else "dataset"
    if os.path.exists(os.path.join(path, "metadata.json")):
        # ptum pretrain's two kinds of model (ptum.model.saving: ptum.model.saving.GENERATIVE_MODEL)
        pretrained = ("ptum-user-encoder", "ptum-generative-retrieval")
        return "model" if load("metadata.json").get("model") in pretrained else "finetuned"
    return None


def check_output_kind(output: str, kind: str, error) -> None:
    """Refuse (raise `error`) to replace a local folder holding another kind of output, or files
    that are not part of a `kind` output; a new, empty or same-kind folder passes."""
    if not fs.is_local(output) or not os.path.isdir(output):
        return
    found = output_kind(output)
    if found is not None and found != kind:
        what = _KIND_NAMES.get(found, found)
        raise error(f"{output}: holds a {what}; a {kind} output would replace it: choose another folder")
    foreign = sorted(e for e in os.listdir(output)
                     if e not in OUTPUT_ENTRIES[kind] and e != LOCK_FILE and ".tmp" not in e)
    if foreign:
        raise error(f"{output}: holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, not part of a "
                    f"{kind} output; the run replaces the whole folder: choose a new or empty one")


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

    def file_rows(self, split: str) -> List[Optional[int]]:
        """The row count the manifest records for each file of `split` (None: not recorded)."""
        files = self.split_files(split)
        return list(self.manifest["splits"][split].get("file_rows") or [None] * len(files))

    def read_split(self, split: str, columns: Optional[List[str]] = None):
        """The split as one pyarrow Table (rows in file order). A missing, unreadable or
        shortened file is a DatasetError naming it."""
        import pyarrow as pa

        files = self.split_files(split)
        tables = [read_dataset_file(f, columns, rows) for f, rows in zip(files, self.file_rows(split))]
        if not tables:
            schema = sequence_schema()
            if columns:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables)

    def check_files(self, split: str) -> None:
        """Every file of `split` exists, is Parquet and holds the rows the manifest records
        (footers only: cheap enough before a long job), else a DatasetError naming it."""
        import pyarrow.parquet as pq

        for path, rows in zip(self.split_files(split), self.file_rows(split)):
            try:
                with fs.open_input(path) as f:
                    found = pq.ParquetFile(f).metadata.num_rows
            except (OSError, ValueError) as e:
                raise _damaged(path, e) from None
            _check_rows(path, found, rows)

    def read_checked_bytes(self, rel: str) -> bytes:
        """A vocabulary/catalog/labels file, verified against the digest in the manifest."""
        path = self.path(rel)
        try:
            data = fs.read_bytes(path)
        except (OSError, FileNotFoundError) as e:
            raise DatasetError(f"{path}: missing or unreadable ({e}); the dataset is damaged: "
                               "run ptum tokenize again") from None
        expected = (self.manifest.get("file_sha256") or {}).get(rel)
        if expected is None:
            raise DatasetError(f"{path}: the manifest records no digest for it; run ptum tokenize again")
        if hashlib.sha256(data).hexdigest() != expected:
            raise DatasetError(f"{path}: does not match the digest in the manifest (changed after the tokenize "
                               "run that wrote the dataset); run ptum tokenize again")
        return data

    def vocab_files(self) -> Dict[str, bytes]:
        """Every vocabulary file of the dataset (relative path -> verified bytes): what a model
        trained on it must copy (a snapshot: later changes to the folder do not reach it)."""
        return {rel: self.read_checked_bytes(rel) for rel in sorted(self.manifest.get("file_sha256") or {})
                if rel.startswith(VOCAB_DIR + "/")}

    def read_items_vocab(self):
        return self.read_vocab_table(ITEMS_VOCAB)

    def read_vocab_table(self, name: str):
        rel = f"{VOCAB_DIR}/{name}"
        if rel not in (self.manifest.get("file_sha256") or {}):
            return None
        return parquet_from_bytes(self.read_checked_bytes(rel))


def catalog_only_rows(catalog) -> List[int]:
    """Row numbers of the catalog's items without a token id (no events, or fewer than the
    vocabulary's min count), in catalog order, the first row of each item. Wherever a model can
    return items it never trained on (the title encoder's exported table, a generative model's
    codes), the j-th of them takes the token id num_item_tokens + j, after the vocabulary."""
    if catalog is None or "token_id" not in catalog.column_names:
        return []
    seen, out = set(), []
    for row, (item, token) in enumerate(zip(catalog.column("item_id").to_pylist(),
                                            catalog.column("token_id").to_pylist())):
        if item is not None and (token is None or token < 0) and item not in seen:
            seen.add(item)
            out.append(row)
    return out


def catalog_only_items(catalog) -> List[str]:
    """The item ids of catalog_only_rows, in that order."""
    rows = catalog_only_rows(catalog)
    return catalog.column("item_id").take(rows).to_pylist() if rows else []


def parquet_from_bytes(data: bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data))


def file_sha256(paths: Dict[str, str]) -> Dict[str, str]:
    """{relative path: sha256 of the file at the full path} for the manifest."""
    return {rel: hashlib.sha256(fs.read_bytes(full)).hexdigest() for rel, full in sorted(paths.items())}


def read_dataset_file(path: str, columns: Optional[Sequence[str]] = None, rows: Optional[int] = None):
    """A sequence file of a dataset: a DatasetError naming it when it is missing, unreadable or
    does not hold the rows the manifest records."""
    try:
        table = read_parquet(path, columns)
    except (OSError, ValueError) as e:   # pyarrow's ArrowInvalid is a ValueError
        raise _damaged(path, e) from None
    _check_rows(path, table.num_rows, rows)
    return table


def _damaged(path: str, e: Exception) -> DatasetError:
    """The one-line error for a dataset file that is missing or not readable Parquet."""
    if isinstance(e, FileNotFoundError):
        return DatasetError(f"{path}: missing (the manifest lists it); the dataset is damaged: run ptum tokenize again")
    return DatasetError(f"{path}: unreadable Parquet ({str(e).splitlines()[0][:160]}); the dataset is damaged: "
                        "run ptum tokenize again")


def _check_rows(path: str, found: int, rows: Optional[int]) -> None:
    if rows is not None and found != rows:
        raise DatasetError(f"{path}: {found} rows, the manifest records {rows}; the dataset is damaged: "
                           "run ptum tokenize again")


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
    manifest = read_manifest(mpath)
    try:
        version = int(manifest.get("format_version", 1))
    except (TypeError, ValueError):
        version = 0
    if version < FORMAT_VERSION:
        raise DatasetError(
            f"{root}: dataset format {version} is older than {FORMAT_VERSION} (format 3 seals the manifest "
            "with a digest and counts users per split); run ptum tokenize again (with --vocab-from for a "
            "frozen vocabulary)")
    check_seal(mpath, manifest)
    try:
        problems = check_invariants(manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        problems = [f"missing or malformed field ({type(e).__name__}: {e})"]
    if problems:
        raise DatasetError(f"{mpath}: counts do not add up ({'; '.join(problems)}); run ptum tokenize again")
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
    problems += _user_invariants(manifest)
    return problems


def _user_invariants(manifest: dict) -> List[str]:
    """Every accepted user is in the splits its category says (see USERS_LEFT_OUT)."""
    c, splits, scheme = manifest["counts"], manifest["splits"], manifest.get("split_scheme")
    if scheme not in USERS_LEFT_OUT or set(splits) != set(SPLIT_SCHEMES[scheme]):
        return [f"split scheme {scheme!r} with splits {sorted(splits)}"]
    users = int(c.get("users", -1))
    problems = []
    if scheme == "user-hash":
        if sum(int(s["rows"]) for s in splits.values()) != users:
            problems.append("rows(pretrain) + rows(finetune) != users")
    for name, left_out in USERS_LEFT_OUT[scheme].items():
        expected = users - sum(int(c.get(k, 0)) for k in left_out)
        if int(splits[name]["rows"]) != expected:
            problems.append(f"rows({name}) = {splits[name]['rows']} != users - {' - '.join(left_out) or '0'} "
                            f"= {expected}")
    for name, s in splits.items():
        if "file_rows" in s and (len(s["file_rows"]) != len(s["files"]) or sum(s["file_rows"]) != s["rows"]):
            problems.append(f"the files of split {name} do not add up to its rows")
    return problems


MANIFEST_DIGEST = "manifest_sha256"


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own digest field."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def commit_manifest(path: str, manifest: dict) -> dict:
    """Seal the manifest with its digest and write it atomically (the commit step)."""
    manifest = json.loads(json.dumps(manifest, default=str))   # what the file will hold
    manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
    write_json_atomic(path, manifest)
    return manifest


def read_manifest(path: str, error=None) -> dict:
    """A sealed manifest, checked: readable JSON, its digest matches (an edit after the run
    that wrote it is refused). `error`: the exception class to raise (default DatasetError)."""
    error = error or DatasetError
    try:
        manifest = json.loads(fs.read_bytes(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise error(f"{path}: unreadable manifest ({type(e).__name__}: {str(e)[:120]}); "
                    "run the job that wrote it again") from None
    if not isinstance(manifest, dict):
        raise error(f"{path}: unreadable manifest (not a JSON object); run the job that wrote it again")
    return manifest


def read_sealed_manifest(folder: str, error, unfinished: str) -> dict:
    """The manifest of a committed output folder, its seal checked; `error(f"{folder}:
    {unfinished}")` when there is none (the run that writes it did not finish)."""
    mpath = fs.join(folder, MANIFEST)
    if not fs.exists(mpath):
        raise error(f"{folder}: {unfinished}")
    manifest = read_manifest(mpath, error)
    check_seal(mpath, manifest, error)
    return manifest


def check_seal(path: str, manifest: dict, error=None) -> None:
    error = error or DatasetError
    if MANIFEST_DIGEST not in manifest:
        raise error(f"{path}: the manifest has no digest (written by an older ptum); run that job again")
    if manifest.get(MANIFEST_DIGEST) != manifest_digest(manifest):
        raise error(f"{path}: the manifest's digest does not match its content (edited or damaged after the "
                    "run that wrote it); run that job again")


def write_json_atomic(path: str, obj: dict) -> None:
    """Write JSON so that readers see the old file or the whole new one."""
    fs.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"), fsync=True)


def file_fingerprint(path: str, size: int, head: bytes, tail: bytes) -> Dict[str, object]:
    h = hashlib.sha256()
    h.update(head)
    h.update(tail)
    return {"path": path, "size": size, "sha256_head_tail": h.hexdigest()}
