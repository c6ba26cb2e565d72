"""The same tokenization transform in one process with pyarrow only (no Beam).

It is the local upper bound that the Beam job is benchmarked against
(benchmarks/tokenize_benchmark.py); it writes an identical dataset.
"""
from __future__ import annotations

from collections import defaultdict

from ptum.data import contracts
from ptum.data.ingest import formats, plan, reader, sessions, sink, splitting, vocabulary


def run(opts: plan.TokenizeOptions) -> dict:
    with sink.staged_output(opts, "ptum tokenize (reference)") as staged:
        _run(staged)
    return contracts.open_dataset(opts.output).manifest


def _run(opts: plan.TokenizeOptions) -> dict:
    specs, extra = plan.plan_inputs(opts)
    split = splitting.SplitSpec.from_options(opts)
    num_shards = opts.num_shards or plan.auto_shards(specs)
    fps = plan.fingerprints(specs)
    buckets = defaultdict(list)
    dls, counts = [], []
    for spec in specs:
        for unit in reader.read_units(reader.Split(spec), opts):   # files read whole
            events, dl, read = reader.parse_input_unit(unit, opts.max_line_bytes)
            counts.append(reader.read_counts(spec.path, read, dl.num_rows, events))
            if dl.num_rows:
                dls.append(dl)
            for b, t in formats.split_by_bucket(events, num_shards):
                buckets[b].append(t)
    histories, item_counts, beh_counts = {}, [], []
    for b, tables in buckets.items():
        h, c = sessions.build_histories(tables, opts.max_history)
        histories[b] = h
        counts.append(c)
        ic, bc = sessions.history_stats(h)
        item_counts.append(ic)
        beh_counts.append(bc)
    merged_items = sessions.merge_counts(item_counts)
    items_vocab = vocabulary.items_vocab_for(merged_items, opts)
    behavior_vocab = vocabulary.behavior_vocab_for(sessions.merge_counts(beh_counts), opts)
    files = []
    for b in sorted(histories):
        f, c = sink.write_bucket(b, num_shards, histories[b], items_vocab, behavior_vocab, split, opts.output)
        files.extend(f)
        counts.append(c)
    import pyarrow as pa
    dl_all = pa.concat_tables(dls) if dls else contracts.deadletter_schema().empty_table()
    counts.append(sink.deadletter_counts(dl_all))
    name = sink.shard_name("deadletter", 0, 1)
    sink.write_parquet(dl_all, sink.join(opts.output, contracts.DEADLETTER_DIR, name))
    files.append(("deadletter", name, dl_all.num_rows, 0))
    written = sink.write_vocab_and_tables(opts.output, items_vocab, behavior_vocab, extra, opts)
    total = sink.sum_counts(counts)
    total["items_seen"] = merged_items.num_rows
    manifest = sink.make_manifest(opts, total, files, items_vocab, behavior_vocab, fps,
                                  extra["has_time"], "pyarrow-reference", written)
    manifest = contracts.commit_manifest(sink.join(opts.output, contracts.MANIFEST), manifest)
    return manifest
