"""The Beam tokenization job: raw logs -> sequence dataset.

Arrow record batches flow through the pipeline, never one element per event. Four composite
transforms, each testable on its own with TestPipeline (they return dicts of PCollections):

  ReadEvents (ListInputs: files, byte ranges of big text files, Parquet row groups
        -> Spread -> ReadAndParse) ------------> dead letters and per-range line counts
        | (user bucket, staged events file)
  BuildHistories (GroupByUserBucket -> HistoriesOfBucket) -> per-bucket item/behavior counts
        |                                                            |
        |                         BuildVocabularies (combine -> item and behavior vocabularies)
        |                                                            |
  WriteDataset (WriteVocabulary -> paths joined to every bucket -> WriteSequences (reads the
                vocabulary files); dead letters numbered by their file's lines -> WriteDeadLetters;
                every branch's counts and files
                -> CollectParts -> WriteManifest: last, the commit marker)

No side inputs: every branch ends in the one last step (see WriteDataset).

Runs on Beam's FnApiRunner in-process by default (offline); any other runner
(Dataflow, Flink, Spark) is chosen with the usual `--runner ...` pipeline options.
"""
from __future__ import annotations

import logging
from typing import List, Optional

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from ptum.data import contracts
from ptum.data.ingest import formats, plan, reader, sessions, sink, splitting, vocabulary

log = logging.getLogger(__name__)
STAGING = ".staging"
_KV = beam.typehints.KV[int, beam.typehints.Any]   # (user bucket or shard, payload)

# A step with several kinds of output yields (kind, payload) pairs that `by_kind` splits,
# instead of Beam's tagged outputs: Beam's DaskRunner hands every consumer of a multi-output
# ParDo all of its outputs (its ParDo translation returns one bag per transform), so tagged
# outputs would mix there; plain elements and Filter-like steps run the same on every runner.
EVENTS, DEADLETTER, LINES, COUNTS, HISTORIES, STATS, FILES = (
    "events", "deadletter", "lines", "counts", "histories", "stats", "files")


def by_kind(pcoll, kinds: dict) -> dict:
    """{kind: PCollection of the payloads of that kind} from a PCollection of (kind, payload);
    `kinds` maps each kind to its element type hint (None: any)."""
    out = {}
    for kind, hint in kinds.items():
        step = beam.FlatMap(_payloads_of, kind)
        out[kind] = pcoll | f"Only{kind.title()}" >> (step.with_output_types(hint) if hint is not None else step)
    return out


def _payloads_of(element, kind):
    if element[0] == kind:
        yield element[1]


class ReadAndParse(beam.DoFn):
    """A Split (a file, a byte range of one, or Parquet row groups) -> (EVENTS, (user bucket,
    staged events file)), (DEADLETTER, (file index, table)), (LINES, (file index, (range index,
    lines))) for a byte range, and (COUNTS, dict) elements (see `by_kind`).

    Reading and parsing are fused: raw bytes never travel through the runner (only
    Arrow tables of parsed events do); splits are the unit of parallelism."""

    def __init__(self, opts: plan.TokenizeOptions, num_shards: int, deadletter_shards: int):
        self._opts = opts
        self._num_shards = num_shards
        self._dl_shards = deadletter_shards
        self._read = Metrics.counter("tokenize", "events_read")
        self._dead = Metrics.counter("tokenize", "events_dead_lettered")

    def process(self, split: reader.Split):
        pending = {}
        for unit in reader.read_units(split, self._opts):
            if isinstance(unit, reader.RangeLines):
                yield LINES, (unit.file_idx, (unit.index, unit.lines))
                continue
            events, dl, read = reader.parse_input_unit(unit, self._opts.max_line_bytes)
            self._read.inc(read)
            yield COUNTS, reader.read_counts(split.spec.path, read, dl.num_rows, events)
            if dl.num_rows:
                self._dead.inc(dl.num_rows)
                yield DEADLETTER, (split.spec.file_idx, dl)
            for bucket, table in formats.split_by_bucket(events, self._num_shards):
                pending.setdefault(bucket, []).append(table)
        # The shuffle goes through files: events are staged as Arrow IPC files per user
        # bucket and only their paths are grouped (runners copy small elements cheaply).
        for bucket, tables in pending.items():
            path = sink.join(self._opts.output, STAGING, f"bucket-{bucket:05d}",
                             f"file-{split.spec.file_idx:05d}-{split.index:05d}.arrow")
            sink.write_arrow(pa.concat_tables(tables), path)
            yield EVENTS, (bucket, path)


class HistoriesOfBucket(beam.DoFn):
    """All events of a user bucket -> sorted, de-duplicated, truncated histories, staged as an
    Arrow file: (HISTORIES, (bucket, staged histories file)), (STATS, (item counts, behavior
    counts)) and (COUNTS, dict) elements. Only the file's path travels on to the join with the
    vocabulary (a table would be shuffled)."""

    def __init__(self, max_history: int, output: str):
        self._max_history = max_history
        self._output = output
        self._dups = Metrics.counter("tokenize", "duplicates_dropped")

    def process(self, element):
        bucket, paths = element
        histories, counts = sessions.build_histories([sink.read_arrow(p) for p in sorted(paths)],
                                                 self._max_history)
        self._dups.inc(counts["duplicates_dropped"])
        yield COUNTS, counts
        yield STATS, sessions.history_stats(histories)
        path = sink.join(self._output, STAGING, "histories", f"bucket-{bucket:05d}.arrow")
        sink.write_arrow(histories, path)
        yield HISTORIES, (bucket, path)


class MergeCountTables(beam.CombineFn):
    """Per-bucket (key, count) tables -> one table of global counts."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, table):
        # A new list, never the accumulator mutated: a runner may hand one accumulator object
        # to several folds (Beam's DaskRunner shares the initial one within a worker process).
        acc = acc + [table]
        if len(acc) > 16:
            acc = [sessions.merge_counts(acc)]
        return acc

    def merge_accumulators(self, accs):
        return [sessions.merge_counts([t for a in accs for t in a])]

    def extract_output(self, acc):
        return sessions.merge_counts(acc)


class WriteSequences(beam.DoFn):
    """(bucket, {"histories": [staged histories file], "vocab": [vocabulary files written]}) -> (FILES, file
    record) per split shard, and (COUNTS, dict). The vocabularies are read from the files the
    vocabulary stage wrote (once per worker), not passed as side inputs."""

    def __init__(self, num_shards: int, split: splitting.SplitSpec, output: str):
        self._n = num_shards
        self._split = split
        self._output = output
        self._vocab = None

    def _vocabularies(self, written):
        if self._vocab is None:
            self._vocab = tuple(sink.read_parquet(sink.join(self._output, written[k]))
                                for k in ("items_vocab", "behaviors_vocab"))
        return self._vocab

    def process(self, element):
        bucket, joined = element
        histories, written = list(joined["histories"]), list(joined["vocab"])
        if histories:                   # else a bucket no user hashed into
            yield from self._write(bucket, histories, written)

    def _write(self, bucket, histories, written):
        items_vocab, behavior_vocab = self._vocabularies(written[0])
        table = pa.concat_tables([sink.read_arrow(p) for p in histories])
        files, counts = sink.write_bucket(bucket, self._n, table, items_vocab, behavior_vocab,
                                          self._split, self._output)
        yield COUNTS, counts
        for f in files:
            yield FILES, f


def _number_deadletters(element, n: int):
    """(file index, {"deadletter": tables, "lines": (range index, lines) per byte range}) ->
    (shard, table) with rows numbered by the file's own lines."""
    _, joined = element
    ranges = list(joined["lines"])
    for table in joined["deadletter"]:
        table = reader.file_line_numbers(table, ranges)
        yield int(table.column("row")[0].as_py() or 0) % n, table


def _write_deadletters(element, output: str, n: int):
    key, tables = element
    table = pa.concat_tables(list(tables))
    name = sink.shard_name("deadletter", key, n)
    sink.write_parquet(table, sink.join(output, contracts.DEADLETTER_DIR, name))
    return [(FILES, ("deadletter", name, table.num_rows, 0)), (COUNTS, sink.deadletter_counts(table))]


def _write_manifest(parts, opts, fingerprints, has_time, runner):
    """The commit: [(kind, payload)] from every branch of the job -> manifest.json."""
    def one(kind):
        (value,) = [v for k, v in parts if k == kind]
        return value

    total = sink.sum_counts([v for k, v in parts if k == COUNTS])
    total["items_seen"] = one("items_seen")
    vocab = one("vocab")
    manifest = sink.make_manifest(opts, total, [v for k, v in parts if k == FILES], vocab["items"],
                                  vocab["behaviors"], fingerprints, has_time, runner, one("written"))
    manifest = contracts.commit_manifest(sink.join(opts.output, contracts.MANIFEST), manifest)
    sink.remove_tree(sink.join(opts.output, STAGING))
    return manifest


def _tagged(kind):
    return beam.Map(lambda payload, k: (k, payload), kind)


class ReadEvents(beam.PTransform):
    """Input files -> {"events": (user bucket, staged events file), "deadletter": (file index,
    dead-letter table), "lines": (file index, (range index, lines)), "counts": dicts}. Uncompressed
    text files over `opts.split_bytes` are read as line-aligned byte ranges and Parquet files as
    runs of row groups (planned here, in the driver, from sizes and footers); each split is read
    and parsed where it lands (splits are the unit of parallelism)."""

    def __init__(self, opts: plan.TokenizeOptions, specs: List[formats.FileSpec], num_shards: int,
                 deadletter_shards: int):
        super().__init__()
        self._opts, self._specs, self._n, self._dl = opts, specs, num_shards, deadletter_shards

    def expand(self, pbegin):
        parsed = (
            pbegin
            | "ListInputs" >> beam.Create(reader.plan_splits(self._specs, self._opts.split_bytes))
            | "Spread" >> beam.Reshuffle()
            | "ReadAndParse" >> beam.ParDo(ReadAndParse(self._opts, self._n, self._dl)))
        return by_kind(parsed, {EVENTS: _KV, DEADLETTER: _KV, LINES: _KV, COUNTS: None})


class BuildHistories(beam.PTransform):
    """(user bucket, staged events file) -> {"histories": (bucket, staged histories file),
    "stats": (item counts, behavior counts) per bucket, "counts": dicts}."""

    def __init__(self, max_history: int, output: str):
        super().__init__()
        self._max_history = max_history
        self._output = output

    def expand(self, events):
        built = (
            events
            | "GroupByUserBucket" >> beam.GroupByKey()
            | "HistoriesOfBucket" >> beam.ParDo(HistoriesOfBucket(self._max_history, self._output)))
        return by_kind(built, {HISTORIES: _KV, STATS: None, COUNTS: None})


class BuildVocabularies(beam.PTransform):
    """Per-bucket (item counts, behavior counts) -> {"items": item vocabulary, "behaviors":
    behavior vocabulary, "items_seen": distinct items}: one-element PCollections, computed as
    their own stage (WriteDataset writes them to files that the sequence writers read)."""

    def __init__(self, opts: plan.TokenizeOptions):
        super().__init__()
        self._opts = opts

    def expand(self, stats):
        item_counts = (stats
                       | "ItemCounts" >> beam.Map(lambda s: s[0])
                       | "CombineItemCounts" >> beam.CombineGlobally(MergeCountTables()))
        behavior_counts = (stats
                           | "BehaviorCounts" >> beam.Map(lambda s: s[1])
                           | "CombineBehaviorCounts" >> beam.CombineGlobally(MergeCountTables()))
        return {"items": item_counts | "BuildItemVocab" >> beam.Map(vocabulary.items_vocab_for, self._opts),
                "behaviors": behavior_counts | "BuildBehaviorVocab" >> beam.Map(vocabulary.behavior_vocab_for, self._opts),
                "items_seen": item_counts | "ItemsSeen" >> beam.Map(lambda t: t.num_rows)}


class WriteDataset(beam.PTransform):
    """{"histories", "deadletter", "lines", "items", "behaviors", "items_seen", "read_counts",
    "history_counts"} -> the committed dataset: vocabulary and catalog files first, then the
    sequence shards per split (each bucket joined with the vocabulary files' paths), dead
    letters, and the manifest (last: the commit marker). Returns the manifest.

    No side inputs: every branch flows into the one final step, so runners that compute only
    what the last step needs (Beam's DaskRunner) run all of it, and nothing is recomputed."""

    def __init__(self, opts: plan.TokenizeOptions, extra: dict, fingerprints: List[dict], num_shards: int,
                 deadletter_shards: int, runner: str):
        super().__init__()
        self._opts, self._extra, self._fps = opts, extra, fingerprints
        self._n, self._dl, self._runner = num_shards, deadletter_shards, runner

    def expand(self, inputs):
        opts, extra = self._opts, self._extra
        vocab = ((inputs["items"] | "TagItems" >> _tagged("items"),
                  inputs["behaviors"] | "TagBehaviors" >> _tagged("behaviors"))
                 | "FlattenVocab" >> beam.Flatten()
                 | "PairVocab" >> beam.combiners.ToDict())
        written = vocab | "WriteVocabulary" >> beam.Map(
            lambda v: sink.write_vocab_and_tables(opts.output, v["items"], v["behaviors"], extra, opts))
        to_buckets = written | "ToEveryBucket" >> beam.FlatMap(lambda w, n: [(b, w) for b in range(n)], self._n)
        sequences = by_kind(
            {"histories": inputs["histories"], "vocab": to_buckets}
            | "JoinVocab" >> beam.CoGroupByKey()
            | "WriteSequences" >> beam.ParDo(WriteSequences(self._n, splitting.SplitSpec.from_options(opts), opts.output)),
            {FILES: None, COUNTS: None})
        # Already (kind, payload) pairs: the dead-letter files and their counts.
        dead = ({"deadletter": inputs["deadletter"], "lines": inputs["lines"]}
                | "JoinRangeLines" >> beam.CoGroupByKey()
                | "NumberDeadLetters" >> beam.FlatMap(_number_deadletters, self._dl)
                | "GroupDeadLetters" >> beam.GroupByKey()
                | "WriteDeadLetters" >> beam.FlatMap(_write_deadletters, opts.output, self._dl))
        parts = [
            inputs["read_counts"] | "TagReadCounts" >> _tagged(COUNTS),
            inputs["history_counts"] | "TagHistoryCounts" >> _tagged(COUNTS),
            sequences[COUNTS] | "TagSequenceCounts" >> _tagged(COUNTS),
            sequences[FILES] | "TagSequenceFiles" >> _tagged(FILES),
            dead,
            written | "TagWritten" >> _tagged("written"),
            vocab | "TagVocab" >> _tagged("vocab"),
            inputs["items_seen"] | "TagItemsSeen" >> _tagged("items_seen"),
        ]
        return (parts
                | "FlattenParts" >> beam.Flatten()
                | "CollectParts" >> beam.combiners.ToList()
                | "WriteManifest" >> beam.Map(_write_manifest, opts, self._fps, extra["has_time"], self._runner))


def build(p: beam.Pipeline, opts: plan.TokenizeOptions, specs: List[formats.FileSpec], extra: dict,
          fingerprints: List[dict], num_shards: int, runner: str):
    """Add the tokenization transforms to `p`; returns the manifest PCollection."""
    dl_shards = max(1, min(num_shards, 8))
    parsed = p | "ReadEvents" >> ReadEvents(opts, specs, num_shards, dl_shards)
    built = parsed[EVENTS] | "BuildHistories" >> BuildHistories(opts.max_history, opts.output)
    vocab = built[STATS] | "BuildVocabularies" >> BuildVocabularies(opts)
    return ({"histories": built[HISTORIES], "deadletter": parsed[DEADLETTER], "lines": parsed[LINES],
             "read_counts": parsed[COUNTS], "history_counts": built[COUNTS], **vocab}
            | "WriteDataset" >> WriteDataset(opts, extra, fingerprints, num_shards, dl_shards, runner))


# Runners Beam knows only by their full name.
RUNNER_ALIASES = {"DaskRunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}


def make_pipeline(beam_args: Optional[List[str]] = None):
    """A Pipeline on the runner the args name; FnApiRunner in-process when none is named."""
    beam_args = list(beam_args or [])
    options = PipelineOptions(beam_args)
    runner_name = options.view_as(StandardOptions).runner
    if runner_name in ("DaskRunner", RUNNER_ALIASES["DaskRunner"]) and not any(
            a.startswith(("--dask_partition_size", "--dask_npartitions")) for a in beam_args):
        # Our elements are coarse (input files, user buckets, row batches): one per Dask
        # partition spreads them over the workers (Beam's default packs 128 into one).
        options = PipelineOptions(beam_args + ["--dask_partition_size=1"])
    if runner_name in RUNNER_ALIASES:
        options.view_as(StandardOptions).runner = RUNNER_ALIASES[runner_name]
    if runner_name:
        return beam.Pipeline(options=options), runner_name
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    mode = options.view_as(DirectOptions).direct_running_mode or "in_memory"
    return beam.Pipeline(runner=FnApiRunner(), options=options), f"FnApiRunner({mode})"


def run(opts: plan.TokenizeOptions, beam_args: Optional[List[str]] = None, planned=None) -> dict:
    """Plan (fail fast on bad inputs), build and run the job; returns the manifest. `planned`:
    what plan.plan_inputs(opts) returned, when the caller checked the inputs already."""
    specs, extra = planned or plan.plan_inputs(opts)
    num_shards = opts.num_shards or plan.auto_shards(specs)
    fingerprints = plan.fingerprints(specs)
    with sink.staged_output(opts, "ptum tokenize") as staged:
        p, runner = make_pipeline(beam_args)
        build(p, staged, specs, extra, fingerprints, num_shards, runner)
        run_pipeline(p)
    return contracts.open_dataset(opts.output).manifest


def run_pipeline(p: beam.Pipeline) -> None:
    """Run and wait; an InputError or a Ctrl-C on a worker comes back as itself (the runner
    wraps both in a RuntimeError with its own traceback)."""
    try:
        p.run().wait_until_finish()
    except Exception as e:
        if _interrupted(e):
            raise KeyboardInterrupt from None
        err = input_error_of(e)
        if err is not None:
            raise err from None
        raise


def _interrupted(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, KeyboardInterrupt) or str(e).startswith("KeyboardInterrupt"):
            return True
        e = e.__cause__ or e.__context__
    return False


def input_error_of(e: BaseException) -> Optional[formats.InputError]:
    """The InputError behind a runner's exception (its chain, or its message), without
    the runner's "[while running ...]" suffix; None when there is none."""
    import re

    def clean(text):
        return formats.InputError(re.sub(r"\s*\[while running '[^\]]*'\]\s*$", "", text))

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, formats.InputError) or type(e).__name__ == "InputError":
            return clean(str(e))
        if "InputError: " in str(e):    # re-raised from another process as text
            return clean(str(e).rsplit("InputError: ", 1)[1].splitlines()[0])
        e = e.__cause__ or e.__context__
    return None
