"""Writing a dataset: a stage that replaces the output folder, Parquet shards, vocabulary and
label tables, and the manifest (counts, invariants, files) written last as the commit marker.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Dict, Iterator, List, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ptum import fs
from ptum.data import contracts
from ptum.data.ingest.formats import InputError

from ptum.data.ingest.plan import TokenizeOptions
from ptum.data.ingest.splitting import SplitSpec, tokenize_histories
from ptum.data.ingest.vocabulary import build_catalog, frozen_word_ids


@contextlib.contextmanager
def staged_output(opts: TokenizeOptions, what: str) -> Iterator[TokenizeOptions]:
    """Hold the output's lock, refuse an output of another kind, and yield the options of a run
    that writes a stage which replaces the output when the block ends without an error (see
    ptum.fs.staged_dir: a failed or killed run leaves the previous dataset as it was)."""
    with output_lock(opts.output, what):
        contracts.check_output_kind(opts.output, "dataset", InputError)
        with fs.staged_dir(opts.output) as stage:
            reset_output(stage)
            yield replace(opts, output=stage, stage_of=opts.output)


join = fs.join


def write_parquet(table: pa.Table, path: str) -> None:
    """Write a Parquet file so that it appears whole (see ptum.fs.writer)."""
    with fs.writer(path) as f:
        pq.write_table(table, f, compression="zstd")


def write_arrow(table: pa.Table, path: str) -> None:
    """Stage a table as an Arrow IPC file (the tokenizer's shuffle through files)."""
    import pyarrow.ipc as ipc

    with fs.writer(path) as f, ipc.new_file(f, table.schema) as w:
        w.write_table(table)


read_parquet = contracts.read_parquet


def read_arrow(path: str) -> pa.Table:
    import pyarrow.ipc as ipc

    with fs.open_input(path) as f:
        return ipc.open_file(f).read_all()


def remove_tree(path: str) -> None:
    fs.remove(path)


def shard_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}.parquet"


def output_lock(output: str, what: str = "ptum tokenize"):
    """contracts.output_lock, refusing with an InputError (one line at the CLI)."""
    return contracts.output_lock(output, what, InputError)


def reset_output(output: str) -> None:
    """Remove the manifest first (uncommits the old dataset), then old data files."""
    fs.remove(join(output, contracts.MANIFEST))
    for sub in (contracts.SEQUENCES_DIR, contracts.VOCAB_DIR, contracts.DEADLETTER_DIR, contracts.LABELS_DIR,
                ".staging"):
        fs.remove(join(output, sub))
    fs.makedirs(output)


def sum_counts(dicts) -> dict:
    """Add count dicts (nested one level for dead letters by reason)."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict):
                sub = out.setdefault(k, {})
                for k2, v2 in v.items():
                    sub[k2] = sub.get(k2, 0) + v2
            else:
                out[k] = out.get(k, 0) + v
    return out


def deadletter_counts(dl: pa.Table) -> dict:
    if dl.num_rows == 0:
        return {"dead_by_reason": {}}
    vc = pc.value_counts(dl.column("reason").combine_chunks())
    return {"dead_by_reason": {k: int(c) for k, c in zip(vc.field("values").to_pylist(),
                                                         vc.field("counts").to_pylist())}}


def make_manifest(opts: TokenizeOptions, counts: dict, files: List[Tuple[str, str, int, int]],
                  items_vocab: pa.Table, behavior_vocab: pa.Table, fingerprints_: List[dict],
                  has_time: bool, runner: str, extras: Dict[str, str]) -> dict:
    """The manifest: counts (with invariants), splits and their files, vocab hash, params."""
    import datetime

    by_reason = {r: 0 for r in contracts.DEADLETTER_REASONS}
    by_reason.update(counts.get("dead_by_reason", {}))
    splits: Dict[str, dict] = {n: {"files": [], "file_rows": [], "rows": 0, "events": 0}
                               for n in contracts.SPLIT_SCHEMES[opts.split]}
    deadletter_files = []
    for kind, name, rows, events in sorted(files):
        if kind == "deadletter":
            deadletter_files.append(name)
            continue
        s = splits[kind]
        s["files"].append(name)
        s["file_rows"].append(int(rows))
        s["rows"] += rows
        s["events"] += events
    extras = dict(extras)
    words = extras.pop(WORDS_KEY, {})
    vhash, vhashes = contracts.dataset_vocab_hash(
        items_vocab.column("item_id").to_pylist(), items_vocab.column("token_id").to_pylist(),
        behavior_vocab.column("behavior").to_pylist(), behavior_vocab.column("behavior_id").to_pylist(),
        list(words), list(words.values()))
    c = {
        "events_read": int(counts.get("events_read", 0)),
        "events_accepted": int(counts.get("events_accepted", 0)),
        "events_dead_lettered": {"total": int(sum(by_reason.values())), "by_reason": by_reason},
        "duplicates_dropped": int(counts.get("duplicates_dropped", 0)),
        "events_truncated": int(counts.get("events_truncated", 0)),
        "events_in_sequences": int(counts.get("events_in_sequences", 0)),
        "events_after_target": int(counts.get("events_after_target", 0)),
        "users": int(counts.get("users", 0)),
        **{c: int(counts.get(c, 0)) for c in contracts.USER_CATEGORIES},
        "items": int(items_vocab.num_rows),
        "items_seen": int(counts.get("items_seen", items_vocab.num_rows)),
        "behaviors": int(behavior_vocab.num_rows),
        "oov_events": int(counts.get("oov_events", 0)),
        "oov_behavior_events": int(counts.get("oov_behavior_events", 0)),
        # ids as written unless --strip-ids (parameters.strip_ids): these had surrounding whitespace
        "ids_with_surrounding_space": int(counts.get("ids_with_surrounding_space", 0)),
    }
    manifest = {
        "format_version": contracts.FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "counts": c,
        "splits": splits,
        "split_scheme": opts.split,
        "deadletter_files": [join(contracts.DEADLETTER_DIR, f) for f in deadletter_files],
        "vocab_hash": vhash,
        "vocab_hashes": vhashes,
        "vocab_frozen_from": opts.vocab_from,
        "has_time": has_time,
        "reserved_item_ids": {"pad": contracts.PAD_ID, "mask": contracts.MASK_ID, "oov": contracts.OOV_ID,
                              "first_item": contracts.FIRST_ITEM_ID},
        "parameters": opts.manifest_params(),
        "inputs": fingerprints_,
        "runner": runner,
        "files": extras,
        "inputs_read": {p: {"events_read": int(n), "dead_lettered": int(counts.get("dead_by_file", {}).get(p, 0))}
                        for p, n in sorted(counts.get("read_by_file", {}).items())},
        # Vocabularies, catalog and labels decide what token ids mean: readers verify them.
        "file_sha256": contracts.file_sha256({rel: join(opts.output, rel) for rel in extras.values()}),
    }
    if c["events_read"] == 0 and not opts.allow_empty:
        raise InputError("the inputs hold no record (empty, or a header line only); nothing was committed "
                         "(--allow-empty commits an empty dataset)")
    if c["events_accepted"] == 0 and not opts.allow_empty:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items(), key=lambda x: -x[1]) if n)[:200]
        raise InputError(f"no event was accepted ({c['events_read']} read, "
                         f"{c['events_dead_lettered']['total']} dead-lettered{': ' + reasons if reasons else ''}, "
                         f"{c['duplicates_dropped']} duplicates); nothing was committed (--allow-empty commits "
                         "an empty dataset)")
    problems = contracts.check_invariants(manifest)
    if problems:
        raise AssertionError(f"count invariants violated: {problems}; counts={c}")
    return manifest


def write_bucket(bucket: int, num_shards: int, histories: pa.Table, items_vocab: pa.Table,
                 behavior_vocab: pa.Table, split: SplitSpec, output: str):
    """Tokenize and write one bucket's histories; returns (file records, counts)."""
    rows, counts = tokenize_histories(histories, items_vocab, behavior_vocab, split)
    files = []
    for name, table in rows.items():
        fname = shard_name(name, bucket, num_shards)
        write_parquet(table, join(output, contracts.SEQUENCES_DIR, fname))
        files.append((name, fname, table.num_rows, int(pc.sum(table.column("length")).as_py() or 0)))
    return files, counts


# write_vocab_and_tables hands the word vocabulary to make_manifest (for the vocab hash) under
# this key of its result; make_manifest takes it out before recording the written files.
WORDS_KEY = "__words__"


def write_vocab_and_tables(output: str, items_vocab: pa.Table, behavior_vocab: pa.Table,
                           extra: dict, opts: TokenizeOptions) -> Dict[str, object]:
    """Vocabulary files, the item catalog (title words) and label tables; returns their paths."""
    written = {}
    write_parquet(items_vocab, join(output, contracts.VOCAB_DIR, contracts.ITEMS_VOCAB))
    written["items_vocab"] = join(contracts.VOCAB_DIR, contracts.ITEMS_VOCAB)
    write_parquet(behavior_vocab, join(output, contracts.VOCAB_DIR, contracts.BEHAVIORS_VOCAB))
    written["behaviors_vocab"] = join(contracts.VOCAB_DIR, contracts.BEHAVIORS_VOCAB)
    frozen_words = frozen_word_ids(opts.vocab_from)
    catalog, words = build_catalog(extra.get("catalog"), items_vocab, opts.min_word_count,
                                   opts.max_title_words, frozen_words)
    if words is None and frozen_words:
        # No catalog in this run: the frozen word vocabulary still belongs to the dataset
        # (it is part of the vocab hash the model was trained with).
        words = pa.table({"word": pa.array(list(frozen_words), pa.string()),
                          "word_id": pa.array(list(frozen_words.values()), pa.int32()),
                          "count": pa.array([0] * len(frozen_words), pa.int64())})
        write_parquet(words, join(output, contracts.VOCAB_DIR, contracts.WORDS_VOCAB))
        written["words_vocab"] = join(contracts.VOCAB_DIR, contracts.WORDS_VOCAB)
    if words is not None:
        written[WORDS_KEY] = dict(zip(words.column("word").to_pylist(), words.column("word_id").to_pylist()))
    if catalog is not None:
        write_parquet(catalog, join(output, contracts.VOCAB_DIR, contracts.CATALOG))
        write_parquet(words, join(output, contracts.VOCAB_DIR, contracts.WORDS_VOCAB))
        written["catalog"] = join(contracts.VOCAB_DIR, contracts.CATALOG)
        written["words_vocab"] = join(contracts.VOCAB_DIR, contracts.WORDS_VOCAB)
    if extra.get("labels") is not None:
        write_parquet(extra["labels"], join(output, contracts.LABELS_DIR, "users.parquet"))
        written["labels"] = join(contracts.LABELS_DIR, "users.parquet")
    return written
