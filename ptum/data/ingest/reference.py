"""The same tokenization transform in one process with pyarrow only (no Beam).

It is the local upper bound that the Beam job is benchmarked against
(benchmarks/tokenize_benchmark.py); it writes an identical dataset.
"""
from __future__ import annotations

from collections import defaultdict

from ptum.data import contracts
from ptum.data.ingest import core, formats


def run(opts: core.TokenizeOptions) -> dict:
    with core.staged_output(opts, "ptum tokenize (reference)") as staged:
        _run(staged)
    return contracts.open_dataset(opts.output).manifest


def _run(opts: core.TokenizeOptions) -> dict:
    specs, extra = core.plan_inputs(opts)
    split = core.SplitSpec.from_options(opts)
    num_shards = opts.num_shards or core.auto_shards(specs)
    fps = core.fingerprints(specs)
    buckets = defaultdict(list)
    dls, counts = [], []
    for spec in specs:
        for unit in core.read_units(core.Split(spec), opts):   # files read whole
            events, dl, read = core.parse_input_unit(unit, opts.max_line_bytes)
            counts.append(core.read_counts(spec.path, read, dl.num_rows, events))
            if dl.num_rows:
                dls.append(dl)
            for b, t in formats.split_by_bucket(events, num_shards):
                buckets[b].append(t)
    histories, item_counts, beh_counts = {}, [], []
    for b, tables in buckets.items():
        h, c = core.build_histories(tables, opts.max_history)
        histories[b] = h
        counts.append(c)
        ic, bc = core.history_stats(h)
        item_counts.append(ic)
        beh_counts.append(bc)
    merged_items = core.merge_counts(item_counts)
    items_vocab = core.items_vocab_for(merged_items, opts)
    behavior_vocab = core.behavior_vocab_for(core.merge_counts(beh_counts), opts)
    files = []
    for b in sorted(histories):
        f, c = core.write_bucket(b, num_shards, histories[b], items_vocab, behavior_vocab, split, opts.output)
        files.extend(f)
        counts.append(c)
    import pyarrow as pa
    dl_all = pa.concat_tables(dls) if dls else contracts.deadletter_schema().empty_table()
    counts.append(core.deadletter_counts(dl_all))
    name = core.shard_name("deadletter", 0, 1)
    core.write_parquet(dl_all, core.join(opts.output, contracts.DEADLETTER_DIR, name))
    files.append(("deadletter", name, dl_all.num_rows, 0))
    written = core.write_vocab_and_tables(opts.output, items_vocab, behavior_vocab, extra, opts)
    total = core.sum_counts(counts)
    total["items_seen"] = merged_items.num_rows
    manifest = core.make_manifest(opts, total, files, items_vocab, behavior_vocab, fps,
                                  extra["has_time"], "pyarrow-reference", written)
    manifest = contracts.commit_manifest(core.join(opts.output, contracts.MANIFEST), manifest)
    return manifest
