"""The Beam tokenization job: raw logs -> sequence dataset.

Arrow record batches flow through the pipeline, never one element per event. Four composite
transforms, each testable on its own with TestPipeline:

  ReadEvents (ListInputs -> Spread -> ReadAndParse) ---------------------> dead letters
        | (user bucket, staged events file)
  BuildHistories (GroupByUserBucket -> HistoriesOfBucket) -> per-bucket item/behavior counts
        |                                                            |
        |                         BuildVocabularies (combine -> item and behavior vocabularies)
        |                                                            | (singleton side inputs)
  WriteDataset (WriteSequences, WriteDeadLetters, WriteVocabulary, SumCounts
                -> WriteManifest: last, the commit marker)

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

from ptum import contracts
from ptum.ingest import core, formats

log = logging.getLogger(__name__)
STAGING = ".staging"
# Main outputs are (bucket, staged file path or Arrow table); tagged outputs carry other types.
_KV = beam.typehints.KV[int, beam.typehints.Any]


class ReadAndParse(beam.DoFn):
    """A file -> (user bucket, events table) pairs; dead letters and counts tagged.

    Reading and parsing are fused: raw bytes never travel through the runner (only
    Arrow tables of parsed events do); files are the unit of parallelism."""

    DEADLETTER = "deadletter"
    COUNTS = "counts"

    def __init__(self, opts: core.TokenizeOptions, num_shards: int, deadletter_shards: int):
        self._opts = opts
        self._num_shards = num_shards
        self._dl_shards = deadletter_shards
        self._read = Metrics.counter("tokenize", "events_read")
        self._dead = Metrics.counter("tokenize", "events_dead_lettered")

    def process(self, spec):
        pending = {}
        for unit in core.read_units(spec, self._opts):
            events, dl, read = core.parse_input_unit(unit, self._opts.max_line_bytes)
            self._read.inc(read)
            yield beam.pvalue.TaggedOutput(self.COUNTS, {"events_read": read})
            if dl.num_rows:
                self._dead.inc(dl.num_rows)
                key = int(dl.column("row")[0].as_py() or 0) % self._dl_shards
                yield beam.pvalue.TaggedOutput(self.DEADLETTER, (key, dl))
            for bucket, table in formats.split_by_bucket(events, self._num_shards):
                pending.setdefault(bucket, []).append(table)
        # The shuffle goes through files: events are staged as Arrow IPC files per user
        # bucket and only their paths are grouped (runners copy small elements cheaply).
        for bucket, tables in pending.items():
            path = core.join(self._opts.output, STAGING, f"bucket-{bucket:05d}",
                             f"file-{spec.file_idx:05d}.arrow")
            core.write_arrow(pa.concat_tables(tables), path)
            yield bucket, path


class HistoriesOfBucket(beam.DoFn):
    """All events of a user bucket -> sorted, de-duplicated, truncated histories."""

    STATS = "stats"
    COUNTS = "counts"

    def __init__(self, max_history: int):
        self._max_history = max_history
        self._dups = Metrics.counter("tokenize", "duplicates_dropped")

    def process(self, element):
        bucket, paths = element
        histories, counts = core.build_histories([core.read_arrow(p) for p in sorted(paths)],
                                                 self._max_history)
        self._dups.inc(counts["duplicates_dropped"])
        yield beam.pvalue.TaggedOutput(self.COUNTS, counts)
        yield beam.pvalue.TaggedOutput(self.STATS, core.history_stats(histories))
        yield bucket, histories


class MergeCountTables(beam.CombineFn):
    """Per-bucket (key, count) tables -> one table of global counts."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, table):
        acc.append(table)
        if len(acc) > 16:
            acc = [core.merge_counts(acc)]
        return acc

    def merge_accumulators(self, accs):
        return [core.merge_counts([t for a in accs for t in a])]

    def extract_output(self, acc):
        return core.merge_counts(acc)


class SumCounts(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, acc, counts):
        return core.sum_counts([acc, counts])

    def merge_accumulators(self, accs):
        return core.sum_counts(accs)

    def extract_output(self, acc):
        return acc


class WriteSequences(beam.DoFn):
    COUNTS = "counts"

    def __init__(self, num_shards: int, split: core.SplitSpec, output: str):
        self._n = num_shards
        self._split = split
        self._output = output

    def process(self, element, items_vocab, behavior_vocab):
        bucket, histories = element
        files, counts = core.write_bucket(bucket, self._n, histories, items_vocab, behavior_vocab,
                                          self._split, self._output)
        yield beam.pvalue.TaggedOutput(self.COUNTS, counts)
        yield from files


def _write_deadletters(element, output: str, n: int):
    key, tables = element
    table = pa.concat_tables(list(tables))
    name = core.shard_name("deadletter", key, n)
    core.write_parquet(table, core.join(output, contracts.DEADLETTER_DIR, name))
    return [("deadletter", name, table.num_rows, 0), core.deadletter_counts(table)]


def _write_manifest(_, opts, counts, files, items_vocab, behavior_vocab, items_seen, written,
                    fingerprints, has_time, runner):
    total = dict(counts)
    total["items_seen"] = items_seen
    manifest = core.make_manifest(opts, total, list(files), items_vocab, behavior_vocab,
                                  fingerprints, has_time, runner, written)
    contracts.write_json_atomic(core.join(opts.output, contracts.MANIFEST), manifest)
    core.remove_tree(core.join(opts.output, STAGING))
    return manifest


class ReadEvents(beam.PTransform):
    """Input files -> {"events": (user bucket, staged events file), "deadletter": (shard,
    dead-letter table), "counts": dicts}. Each file is read and parsed where it lands (files
    are the unit of parallelism)."""

    def __init__(self, opts: core.TokenizeOptions, specs: List[formats.FileSpec], num_shards: int,
                 deadletter_shards: int):
        super().__init__()
        self._opts, self._specs, self._n, self._dl = opts, specs, num_shards, deadletter_shards

    def expand(self, pbegin):
        parsed = (
            pbegin
            | "ListInputs" >> beam.Create(self._specs)
            | "Spread" >> beam.Reshuffle()
            | "ReadAndParse" >> beam.ParDo(ReadAndParse(self._opts, self._n, self._dl))
            .with_output_types(_KV).with_outputs(ReadAndParse.DEADLETTER, ReadAndParse.COUNTS, main="events"))
        return {"events": parsed.events, "deadletter": parsed.deadletter, "counts": parsed.counts}


class BuildHistories(beam.PTransform):
    """(user bucket, staged events file) -> {"histories": (bucket, histories table),
    "stats": (item counts, behavior counts) per bucket, "counts": dicts}."""

    def __init__(self, max_history: int):
        super().__init__()
        self._max_history = max_history

    def expand(self, events):
        built = (
            events
            | "GroupByUserBucket" >> beam.GroupByKey()
            | "HistoriesOfBucket" >> beam.ParDo(HistoriesOfBucket(self._max_history))
            .with_output_types(_KV).with_outputs(HistoriesOfBucket.STATS, HistoriesOfBucket.COUNTS,
                                                 main="histories"))
        return {"histories": built.histories, "stats": built.stats, "counts": built.counts}


class BuildVocabularies(beam.PTransform):
    """Per-bucket (item counts, behavior counts) -> {"items": item vocabulary, "behaviors":
    behavior vocabulary, "items_seen": distinct items}: one-element PCollections, computed as
    their own stage (the writers read them as singleton side inputs)."""

    def __init__(self, opts: core.TokenizeOptions):
        super().__init__()
        self._opts = opts

    def expand(self, stats):
        item_counts = (stats
                       | "ItemCounts" >> beam.Map(lambda s: s[0])
                       | "CombineItemCounts" >> beam.CombineGlobally(MergeCountTables()))
        behavior_counts = (stats
                           | "BehaviorCounts" >> beam.Map(lambda s: s[1])
                           | "CombineBehaviorCounts" >> beam.CombineGlobally(MergeCountTables()))
        return {"items": item_counts | "BuildItemVocab" >> beam.Map(core.items_vocab_for, self._opts),
                "behaviors": behavior_counts | "BuildBehaviorVocab" >> beam.Map(core.behavior_vocab_for, self._opts),
                "items_seen": item_counts | "ItemsSeen" >> beam.Map(lambda t: t.num_rows)}


class WriteDataset(beam.PTransform):
    """{"histories", "deadletter", "items", "behaviors", "items_seen", "read_counts",
    "history_counts"} -> the
    committed dataset: sequence shards per split, dead letters, vocabulary and catalog files,
    then the manifest (last: the commit marker). Returns the manifest."""

    def __init__(self, opts: core.TokenizeOptions, extra: dict, fingerprints: List[dict], num_shards: int,
                 deadletter_shards: int, runner: str):
        super().__init__()
        self._opts, self._extra, self._fps = opts, extra, fingerprints
        self._n, self._dl, self._runner = num_shards, deadletter_shards, runner

    def expand(self, inputs):
        opts, extra = self._opts, self._extra
        items_vocab, behavior_vocab = inputs["items"], inputs["behaviors"]
        written = (
            inputs["histories"]
            | "WriteSequences" >> beam.ParDo(WriteSequences(self._n, core.SplitSpec.from_options(opts), opts.output),
                                             items_vocab=beam.pvalue.AsSingleton(items_vocab),
                                             behavior_vocab=beam.pvalue.AsSingleton(behavior_vocab))
            .with_outputs(WriteSequences.COUNTS, main="files"))
        dead = (inputs["deadletter"]
                | "GroupDeadLetters" >> beam.GroupByKey()
                | "WriteDeadLetters" >> beam.FlatMap(_write_deadletters, opts.output, self._dl))
        dead_files = dead | "DeadLetterFiles" >> beam.Filter(lambda x: isinstance(x, tuple))
        dead_counts = dead | "DeadLetterCounts" >> beam.Filter(lambda x: isinstance(x, dict))
        vocab_files = (
            items_vocab
            | "WriteVocabulary" >> beam.Map(
                lambda v, bv: core.write_vocab_and_tables(opts.output, v, bv, extra, opts),
                bv=beam.pvalue.AsSingleton(behavior_vocab)))
        counts = ((inputs["read_counts"], inputs["history_counts"], written.counts, dead_counts)
                  | "FlattenCounts" >> beam.Flatten()
                  | "SumCounts" >> beam.CombineGlobally(SumCounts()))
        files = (written.files, dead_files) | "FlattenFiles" >> beam.Flatten()
        return (
            inputs["histories"].pipeline
            | "Commit" >> beam.Create([None])
            | "WriteManifest" >> beam.Map(
                _write_manifest, opts,
                counts=beam.pvalue.AsSingleton(counts),
                files=beam.pvalue.AsList(files),
                items_vocab=beam.pvalue.AsSingleton(items_vocab),
                behavior_vocab=beam.pvalue.AsSingleton(behavior_vocab),
                items_seen=beam.pvalue.AsSingleton(inputs["items_seen"]),
                written=beam.pvalue.AsSingleton(vocab_files),
                fingerprints=self._fps, has_time=extra["has_time"], runner=self._runner))


def build(p: beam.Pipeline, opts: core.TokenizeOptions, specs: List[formats.FileSpec], extra: dict,
          fingerprints: List[dict], num_shards: int, runner: str):
    """Add the tokenization transforms to `p`; returns the manifest PCollection."""
    dl_shards = max(1, min(num_shards, 8))
    parsed = p | "ReadEvents" >> ReadEvents(opts, specs, num_shards, dl_shards)
    built = parsed["events"] | "BuildHistories" >> BuildHistories(opts.max_history)
    vocab = built["stats"] | "BuildVocabularies" >> BuildVocabularies(opts)
    return ({"histories": built["histories"], "deadletter": parsed["deadletter"],
             "read_counts": parsed["counts"], "history_counts": built["counts"], **vocab}
            | "WriteDataset" >> WriteDataset(opts, extra, fingerprints, num_shards, dl_shards, runner))


def make_pipeline(beam_args: Optional[List[str]] = None):
    """A Pipeline on the runner the args name; FnApiRunner in-process when none is named."""
    options = PipelineOptions(beam_args or [])
    runner_name = options.view_as(StandardOptions).runner
    if runner_name:
        return beam.Pipeline(options=options), runner_name
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    mode = options.view_as(DirectOptions).direct_running_mode or "in_memory"
    return beam.Pipeline(runner=FnApiRunner(), options=options), f"FnApiRunner({mode})"


def run(opts: core.TokenizeOptions, beam_args: Optional[List[str]] = None) -> dict:
    """Plan (fail fast on bad inputs), build and run the job; returns the manifest."""
    specs, extra = core.plan_inputs(opts)
    num_shards = opts.num_shards or core.auto_shards(specs)
    fingerprints = core.fingerprints(specs)
    with core.output_lock(opts.output):
        core.reset_output(opts.output)
        p, runner = make_pipeline(beam_args)
        build(p, opts, specs, extra, fingerprints, num_shards, runner)
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
