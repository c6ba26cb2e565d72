"""The tokenization job's composite transforms, each on its own in a TestPipeline."""
import os

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from ptum.data.ingest import plan, sessions, sink, vocabulary, job

EVENTS = (
    "user_id,item_id,timestamp,behavior\n"
    "u1,a,100,click\n"
    "u1,b,200,click\n"
    "u1,b,200,click\n"          # an exact duplicate: dropped by BuildHistories
    "u2,a,150,buy\n"
    "u2,c,160,click\n"
    "u3,c,170,click\n"
    ",c,180,click\n"            # no user: a dead letter
    "u3,d,not-a-time,click\n"   # a dead letter
)


def _opts(tmp_path, **kw):
    path = tmp_path / "events.csv"
    path.write_text(EVENTS)
    return plan.TokenizeOptions(inputs=[str(path)], format="csv", output=str(tmp_path / "out"), **kw)


def _rows_of_staged(kv):
    return sink.read_arrow(kv[1]).num_rows


def test_read_events_parses_every_file_and_tags_dead_letters(tmp_path):
    opts = _opts(tmp_path)
    specs, _ = plan.plan_inputs(opts)
    with BeamTestPipeline() as p:
        out = p | job.ReadEvents(opts, specs, num_shards=2, deadletter_shards=1)
        events = out["events"] | "EventRows" >> beam.Map(_rows_of_staged) | "SumEvents" >> beam.CombineGlobally(sum)
        buckets = out["events"] | "Buckets" >> beam.Map(lambda kv: kv[0] in (0, 1)) | beam.Distinct()
        dead = (out["deadletter"]
                | "Reasons" >> beam.FlatMap(lambda kv: kv[1].column("reason").to_pylist()))
        read = out["counts"] | "Read" >> beam.Map(lambda c: c["events_read"]) | "SumRead" >> beam.CombineGlobally(sum)
        assert_that(events, equal_to([6]), label="events")
        assert_that(buckets, equal_to([True]), label="buckets")
        assert_that(dead, equal_to(["empty_user_id", "unparsable_timestamp"]), label="dead")
        assert_that(read, equal_to([8]), label="read")


def test_build_histories_groups_users_and_drops_duplicates(tmp_path):
    opts = _opts(tmp_path)
    specs, _ = plan.plan_inputs(opts)

    def users_and_lengths(kv):   # staged histories: one row per kept event, sorted by user and time
        from collections import Counter
        return sorted(Counter(sink.read_arrow(kv[1]).column("user_id").to_pylist()).items())

    with BeamTestPipeline() as p:
        events = (p | job.ReadEvents(opts, specs, num_shards=2, deadletter_shards=1))["events"]
        built = events | job.BuildHistories(max_history=0, output=opts.output)
        users = built["histories"] | beam.FlatMap(users_and_lengths)
        dups = built["counts"] | beam.Map(lambda c: c["duplicates_dropped"]) | beam.CombineGlobally(sum)
        assert_that(users, equal_to([("u1", 2), ("u2", 2), ("u3", 1)]), label="users")
        assert_that(dups, equal_to([1]), label="dups")


def test_build_vocabularies_is_the_reference_vocabulary(tmp_path):
    opts = _opts(tmp_path, min_item_count=2)
    item_counts = [pa.table({"key": ["a", "b"], "count": pa.array([2, 1], pa.int64())}),
                   pa.table({"key": ["a", "c"], "count": pa.array([1, 1], pa.int64())})]
    behavior_counts = [pa.table({"key": ["click"], "count": pa.array([3], pa.int64())}),
                       pa.table({"key": ["buy", "click"], "count": pa.array([1, 1], pa.int64())})]
    expected_items = vocabulary.items_vocab_for(sessions.merge_counts(item_counts), opts)
    expected_behaviors = vocabulary.behavior_vocab_for(sessions.merge_counts(behavior_counts), opts)
    with BeamTestPipeline() as p:
        vocab = p | beam.Create(list(zip(item_counts, behavior_counts))) | job.BuildVocabularies(opts)
        assert_that(vocab["items"] | "ItemRows" >> beam.Map(lambda t: t.to_pylist()),
                    equal_to([expected_items.to_pylist()]), label="items")
        assert_that(vocab["behaviors"] | "BehaviorRows" >> beam.Map(lambda t: t.to_pylist()),
                    equal_to([expected_behaviors.to_pylist()]), label="behaviors")
        assert_that(vocab["items_seen"], equal_to([3]), label="seen")
    # min_item_count=2: only "a" has an id of its own
    assert [r["item_id"] for r in expected_items.to_pylist() if r["token_id"] >= 3] == ["a"]


def test_write_dataset_commits_what_the_other_transforms_built(tmp_path):
    from ptum.data import contracts

    opts = _opts(tmp_path)
    specs, extra = plan.plan_inputs(opts)
    with BeamTestPipeline() as p:
        job.build(p, opts, specs, extra, plan.fingerprints(specs), 2, "TestPipeline")
    ds = contracts.open_dataset(opts.output)
    counts = ds.manifest["counts"]
    assert counts["events_read"] == 8 and counts["events_dead_lettered"]["total"] == 2
    assert counts["duplicates_dropped"] == 1 and counts["users"] == 3
    assert not os.path.exists(os.path.join(opts.output, job.STAGING))
