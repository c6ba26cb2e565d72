"""The Beam tokenization job: formats, dead letters, invariants, splits, determinism, commit."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptum.data import contracts
from ptum.data.ingest import plan, reference, sink, job
from ptum.data.ingest.formats import Columns, InputError


def run_beam(inputs, fmt, out, **kw):
    opts = plan.TokenizeOptions(inputs=list(inputs), format=fmt, output=str(out), **kw)
    return job.run(opts)


def read_rows(out, split):
    t = contracts.open_dataset(str(out)).read_split(split)
    return {r["user_id"]: r for r in t.to_pylist()}


def assert_invariants(manifest):
    assert contracts.check_invariants(manifest) == []


def test_generated_csv_dead_letters_and_invariants(sample_logs, tmp_path):
    logs, stats = sample_logs
    m = run_beam([os.path.join(logs, "events.csv")], "csv", tmp_path / "ds", num_shards=3,
                 items_catalog=os.path.join(logs, "items.csv"))
    assert_invariants(m)
    c = m["counts"]
    assert c["events_read"] == stats.events
    by = c["events_dead_lettered"]["by_reason"]
    for reason in ("wrong_column_count", "unparsable_timestamp", "empty_user_id",
                   "undecodable_bytes", "nul_byte"):
        assert by[reason] > 0, reason
    assert c["events_dead_lettered"]["total"] == stats.malformed
    dl = pa.concat_tables([pq.read_table(os.path.join(tmp_path / "ds", f)) for f in m["deadletter_files"]])
    assert dl.num_rows == stats.malformed
    # Every dead letter names its file, row (1-based line number) and reason.
    assert set(dl.column("file").to_pylist()) == {os.path.join(logs, "events.csv")}
    assert min(dl.column("row").to_pylist()) >= 2
    with open(os.path.join(logs, "events.csv"), "rb") as f:
        lines = f.read().split(b"\n")
    for r in dl.to_pylist()[:20]:
        assert lines[r["row"] - 1][:50] == r["raw"][:50] or r["reason"] in ("undecodable_bytes", "nul_byte")
    ds = contracts.open_dataset(str(tmp_path / "ds"))
    assert set(ds.splits) == {"train", "valid", "test"}
    assert len(ds.split_files("test")) == 3


def test_beam_and_reference_write_the_same_dataset(sample_logs, tmp_path):
    logs, _ = sample_logs
    kw = dict(num_shards=2, items_catalog=os.path.join(logs, "items.csv"))
    mb = run_beam([os.path.join(logs, "events.csv")], "csv", tmp_path / "b", **kw)
    mr = reference.run(plan.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv",
                                            output=str(tmp_path / "r"), **kw))
    assert mb["vocab_hash"] == mr["vocab_hash"]
    assert mb["counts"] == mr["counts"]
    for split in ("train", "valid", "test"):
        assert read_rows(tmp_path / "b", split) == read_rows(tmp_path / "r", split)


def test_sequences_are_time_ordered_and_leave_one_out(sample_logs, tmp_path):
    logs, _ = sample_logs
    run_beam([os.path.join(logs, "events.csv")], "csv", tmp_path / "ds")
    train, valid, test = (read_rows(tmp_path / "ds", s) for s in ("train", "valid", "test"))
    for uid, row in test.items():
        assert np.all(np.diff(row["timestamps"]) >= 0)
        assert valid[uid]["item_ids"] == row["item_ids"][:-1]
        assert train[uid]["item_ids"] == row["item_ids"][:-2]
        assert row["length"] == len(row["item_ids"])


def _write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def test_ties_keep_input_order_and_duplicates_dropped(tmp_path):
    csv = _write(tmp_path / "e.csv", "user_id,item_id,timestamp,behavior,value\n"
                 "u1,b,100,click,\n"
                 "u1,a,100,click,\n"
                 "u1,c,50,click,\n"
                 "u1,a,100,click,\n"      # exact repeat: dropped
                 "u1,a,100,like,\n"       # other behavior: kept
                 "u2,a,1,click,\n")
    m = run_beam([csv], "csv", tmp_path / "ds")
    assert m["counts"]["duplicates_dropped"] == 1
    assert_invariants(m)
    vocab = contracts.open_dataset(str(tmp_path / "ds")).read_items_vocab().to_pylist()
    tok = {r["item_id"]: r["token_id"] for r in vocab}
    row = read_rows(tmp_path / "ds", "test")["u1"]
    assert row["item_ids"] == [tok["c"], tok["b"], tok["a"], tok["a"]]
    assert row["timestamps"] == [50, 100, 100, 100]


def test_every_text_format(tmp_path):
    rows = [("u1", "i1", 10), ("u1", "i2", 20), ("u1", "i3", 30), ("u2", "i1", 5), ("u2", "i3", 7),
            ("u2", "i2", 9)]
    csv = _write(tmp_path / "e.csv", "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    tsv = _write(tmp_path / "e.tsv", "uid\titem\tts\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    jsonl = _write(tmp_path / "e.jsonl", "".join(json.dumps({"user_id": u, "item_id": i, "timestamp": t}) + "\n"
                                                 for u, i, t in rows))
    pq.write_table(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                             "timestamp": [r[2] for r in rows]}), str(tmp_path / "e.parquet"))
    gz = str(tmp_path / "e.csv.gz")
    with gzip.open(gz, "wt") as f:
        f.write(open(csv).read())
    expected = None
    for name, inputs, fmt, kw in [
        ("csv", [csv], "csv", {}),
        ("gz", [gz], "csv", {}),
        ("tsv", [tsv], "tsv", {"columns": Columns(user="uid", item="item", time="ts", behavior=None, value=None)}),
        ("jsonl", [jsonl], "jsonl", {}),
        ("parquet", [str(tmp_path / "e.parquet")], "parquet", {}),
    ]:
        m = run_beam(inputs, fmt, tmp_path / name, **kw)
        assert m["counts"]["events_accepted"] == 6, name
        got = {u: r["item_ids"] for u, r in read_rows(tmp_path / name, "test").items()}
        expected = expected or got
        assert got == expected, name
    seq = _write(tmp_path / "s.txt", "u1 i1 i2 i3\nu2 i1 i3 i2\n")
    m = run_beam([seq], "sequence-lines", tmp_path / "seq")
    assert m["has_time"] is False
    assert {u: r["item_ids"] for u, r in read_rows(tmp_path / "seq", "test").items()} == expected


def test_iso_timestamps_and_encoding(tmp_path):
    text = ("user_id,item_id,timestamp\n"
            "ü1,café,2024-01-02T00:00:00Z\n"
            "ü1,thé,2024-01-01 00:00:00\n"
            "ü1,eau,2024-01-03T00:00:00+01:00\n")
    p = tmp_path / "l1.csv"
    p.write_bytes(text.encode("latin-1"))
    m = run_beam([str(p)], "csv", tmp_path / "ds", encoding="latin-1")
    assert m["counts"]["events_accepted"] == 3
    row = read_rows(tmp_path / "ds", "test")["ü1"]
    assert row["timestamps"] == [1704067200, 1704153600, 1704236400]
    vocab = {r["item_id"] for r in contracts.open_dataset(str(tmp_path / "ds")).read_items_vocab().to_pylist()}
    assert vocab == {"café", "thé", "eau"}


def _movielens_100k(d):
    os.makedirs(d)
    _write(os.path.join(d, "u.data"), "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250000\n"
           "2\t30\t2\t881250001\n1\t30\t1\t881250951\n2\t20\t4\t881250002\n")
    with open(os.path.join(d, "u.item"), "wb") as f:
        for i, t in ((10, "Amélie (2001)"), (20, "Heat (1995)"), (30, "Up (2009)")):
            f.write(f"{i}|{t}|01-Jan-2001||http://x|0|1|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n".encode("latin-1"))
    _write(os.path.join(d, "u.user"), "1|24|M|technician|85711\n2|53|F|other|94043\n")


def test_movielens_layouts_write_labels(tmp_path):
    d100 = str(tmp_path / "ml100")
    _movielens_100k(d100)
    m = run_beam([d100], "movielens", tmp_path / "o100")
    assert m["counts"]["events_accepted"] == 6 and m["counts"]["users"] == 2
    labels = pq.read_table(str(tmp_path / "o100" / "labels" / "users.parquet")).to_pylist()
    assert labels[1] == {"user_id": "2", "gender": "F", "age": 53, "age_group": "45+", "occupation": "other"}
    catalog = pq.read_table(str(tmp_path / "o100" / "vocab" / "catalog.parquet")).to_pylist()
    assert catalog[0]["title"] == "Amélie" and "Action" in catalog[0]["categories"]
    d1m = str(tmp_path / "ml1m")
    os.makedirs(d1m)
    _write(os.path.join(d1m, "ratings.dat"), "1::10::5::978300760\n1::20::3::978302109\n1::30::3::978301968\n")
    _write(os.path.join(d1m, "movies.dat"), "10::Heat (1995)::Action|Crime\n20::Up (2009)::Animation\n")
    _write(os.path.join(d1m, "users.dat"), "1::F::1::10::48067\n")
    m = run_beam([d1m], "movielens", tmp_path / "o1m")
    assert m["counts"]["events_accepted"] == 3
    row = read_rows(tmp_path / "o1m", "test")["1"]
    assert row["timestamps"] == [978300760, 978301968, 978302109]
    assert pq.read_table(str(tmp_path / "o1m" / "labels" / "users.parquet")).to_pylist()[0]["age_group"] == "<25"


def test_remaining_dead_letter_reasons(tmp_path):
    long_line = "u1," + "x" * 5000 + ",1\n"
    csv = _write(tmp_path / "e.csv", "user_id,item_id,timestamp,behavior,value\n"
                 "u1,a,1,click,notanumber\n"    # unparsable value
                 "u1,,2,click,\n"               # empty item id
                 + long_line.replace(",1\n", ",1,click,\n")
                 + "u1,b,3,click,1.5\n")
    m = run_beam([csv], "csv", tmp_path / "a", max_line_bytes=1000)
    by = m["counts"]["events_dead_lettered"]["by_reason"]
    assert (by["unparsable_value"], by["empty_item_id"], by["line_too_long"]) == (1, 1, 1)
    assert m["counts"]["events_accepted"] == 1
    # A line longer than the reader's buffer is skipped by the reader itself.
    huge = _write(tmp_path / "h.csv", "user_id,item_id,timestamp\nu1,a,1\nu1," + "y" * (3 << 20)
                  + ",2\nu1,b,3\n")
    m = run_beam([huge], "csv", tmp_path / "h")
    assert m["counts"]["events_dead_lettered"]["by_reason"]["line_too_long"] == 1
    assert m["counts"]["events_accepted"] == 2
    dl = pq.read_table(os.path.join(tmp_path / "h", m["deadletter_files"][0])).to_pylist()
    assert dl[0]["row"] == 3 and len(dl[0]["raw"]) <= 1024
    jsonl = _write(tmp_path / "e.jsonl", '{"user_id": "u", "item_id": "i", "timestamp": 1}\n{broken\n[1,2]\n')
    m = run_beam([jsonl], "jsonl", tmp_path / "b")
    assert m["counts"]["events_dead_lettered"]["by_reason"]["malformed_json"] == 2
    # A truncated gzip with --allow-truncated: complete lines before the cut are kept, the
    # rest is one dead letter (without the flag the run fails: tests/pipelines/test_inputs.py).
    body = "user_id,item_id,timestamp\n" + "".join(f"u{i % 7},i{i % 13},{i}\n" for i in range(20000))
    gz = gzip.compress(body.encode())
    (tmp_path / "t.csv.gz").write_bytes(gz[: len(gz) // 2])
    m = run_beam([str(tmp_path / "t.csv.gz")], "csv", tmp_path / "c", allow_truncated=True)
    c = m["counts"]
    assert c["events_dead_lettered"]["by_reason"]["truncated_input"] == 1
    assert 0 < c["events_accepted"] < 20000
    assert_invariants(m)


def test_split_schemes(tmp_path):
    rows = "".join(f"u{u},i{(u + k) % 9},{1000 * k + u}\n" for u in range(40) for k in range(6))
    csv = _write(tmp_path / "e.csv", "user_id,item_id,timestamp\n" + rows)
    m = run_beam([csv], "csv", tmp_path / "t", split="time", time_cut="3500")
    assert set(m["splits"]) == {"train", "test"}
    train, test = read_rows(tmp_path / "t", "train"), read_rows(tmp_path / "t", "test")
    for uid, r in test.items():
        assert all(t < 3500 for t in r["timestamps"][:-1]) and r["timestamps"][-1] >= 3500
        assert all(t < 3500 for t in train[uid]["timestamps"])
    assert_invariants(m)
    m = run_beam([csv], "csv", tmp_path / "h", split="user-hash", finetune_fraction=0.3)
    pre, fine = read_rows(tmp_path / "h", "pretrain"), read_rows(tmp_path / "h", "finetune")
    assert not set(pre) & set(fine) and len(pre) + len(fine) == 40 and 0 < len(fine) < 40
    assert all(contracts.stable_user_hash(u) < 0.3 for u in fine)
    m = run_beam([csv], "csv", tmp_path / "m", max_history=4, min_item_count=30)
    assert m["counts"]["events_truncated"] == 80
    assert m["counts"]["oov_events"] > 0
    assert_invariants(m)


def test_frozen_vocabulary_keeps_the_hash(sample_logs, tmp_path):
    logs, _ = sample_logs
    m1 = run_beam([os.path.join(logs, "events.csv")], "csv", tmp_path / "a")
    extra = _write(tmp_path / "new.csv", "user_id,item_id,timestamp\nz,brand_new_item,1\nz,item_000001,2\n")
    m2 = run_beam([extra], "csv", tmp_path / "b", vocab_from=str(tmp_path / "a"))
    assert m2["vocab_hash"] == m1["vocab_hash"]
    assert m2["counts"]["oov_events"] == 1


def test_deterministic(sample_logs, tmp_path):
    logs, _ = sample_logs
    a = run_beam([os.path.join(logs, "events.csv")], "csv", tmp_path / "a", num_shards=2)
    b = run_beam([os.path.join(logs, "events.csv")], "csv", tmp_path / "b", num_shards=2)
    assert a["vocab_hash"] == b["vocab_hash"] and a["counts"] == b["counts"]
    for split in ("train", "test"):
        for fa, fb in zip(contracts.open_dataset(str(tmp_path / "a")).split_files(split),
                          contracts.open_dataset(str(tmp_path / "b")).split_files(split)):
            assert pq.read_table(fa).equals(pq.read_table(fb))


def test_clear_errors_before_work(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        run_beam([str(tmp_path / "missing.csv")], "csv", tmp_path / "o")
    with pytest.raises(InputError, match="unknown format"):
        run_beam([str(tmp_path)], "xml", tmp_path / "o")
    csv = _write(tmp_path / "e.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(InputError, match="missing column"):
        run_beam([csv], "csv", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    r = subprocess.run([sys.executable, "-m", "ptum.cli", "tokenize", "--input", str(tmp_path / "nope"),
                        "--format", "csv", "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr
    with pytest.raises(contracts.DatasetError, match="no such dataset"):
        contracts.open_dataset(str(tmp_path / "o"))


def test_failed_run_leaves_the_previous_dataset(sample_logs, tmp_path, monkeypatch):
    logs, _ = sample_logs
    out = tmp_path / "ds"
    run_beam([os.path.join(logs, "events.csv")], "csv", out)
    before = contracts.open_dataset(str(out))
    rows = before.read_split("test").to_pylist()
    real_write = sink.write_parquet

    def failing(table, path):
        if "vocab" in path:
            raise IOError(f"simulated storage failure writing {path}")
        return real_write(table, path)

    # The in-process runner runs the DoFns in this process, so the patch reaches them.
    monkeypatch.setattr(sink, "write_parquet", failing)
    with pytest.raises(Exception, match="simulated storage failure"):
        run_beam([os.path.join(logs, "events.csv")], "csv", out)
    after = contracts.open_dataset(str(out))
    assert after.manifest == before.manifest and after.read_split("test").to_pylist() == rows
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")] == []   # the stage is gone


def test_killed_run_leaves_the_previous_dataset(sample_logs, tmp_path):
    from ptum.data.generate import generate

    logs = str(tmp_path / "logs")
    generate(logs, users=4000, items=500, seed=1, mean_events=40)
    out = tmp_path / "ds"
    run_beam([os.path.join(sample_logs[0], "events.csv")], "csv", out)   # the previous run's dataset
    before = contracts.open_dataset(str(out))
    proc = subprocess.Popen([sys.executable, "-m", "ptum.cli", "tokenize", "--input",
                             os.path.join(logs, "events.csv"), "--format", "csv", "--output", str(out),
                             "--num-shards", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120

    def writing():
        return any((p / "sequences").exists() for p in tmp_path.iterdir() if p.name.startswith(".ds.ptum-new-"))
    while time.time() < deadline and not writing() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
    after = contracts.open_dataset(str(out))
    assert after.manifest == before.manifest
    assert after.read_split("test").num_rows == before.manifest["splits"]["test"]["rows"]
    # The next run removes the killed run's stage and replaces the dataset.
    run_beam([os.path.join(sample_logs[0], "events.csv")], "csv", out, num_shards=3)
    assert contracts.open_dataset(str(out)).manifest["parameters"]["num_shards"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")] == []


def test_pipeline_survives_runner_api_round_trip(sample_logs, tmp_path):
    import apache_beam as beam

    logs, _ = sample_logs
    opts = plan.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv",
                                output=str(tmp_path / "ds"))
    specs, extra = plan.plan_inputs(opts)
    p, runner = job.make_pipeline([])
    job.build(p, opts, specs, extra, plan.fingerprints(specs), 2, runner)
    proto = p.to_runner_api()
    p2 = beam.Pipeline.from_runner_api(proto, p.runner, p._options)
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"ReadEvents", "ReadEvents/ReadAndParse", "BuildHistories/GroupByUserBucket", "BuildVocabularies",
            "WriteDataset/WriteSequences", "WriteDataset/WriteManifest"} <= names
    p2.run().wait_until_finish()
    m = contracts.open_dataset(str(tmp_path / "ds")).manifest
    assert_invariants(m)
