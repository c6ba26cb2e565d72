"""Inputs as users meet them: nothing silently lost or invented (issue 12).

Each case failed before the fix: an overflowing timestamp became INT64_MIN, a truncated
.csv.gz committed, a quoted newline split a record, a BOM or quoted header was refused,
MovieLens' own catalog was refused, a NaN label became the class "nan", and two runs into
one folder both reported success."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptum.data import contracts
from ptum.data.ingest import plan, reference, sink, job
from ptum.data.ingest.formats import Columns, InputError

HEADER = "user_id,item_id,timestamp\n"


def _write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


def _run(inputs, fmt, out, **kw):
    return job.run(plan.TokenizeOptions(inputs=list(inputs), format=fmt, output=str(out), **kw))


def _deadletters(out, manifest):
    tables = [pq.read_table(os.path.join(str(out), f)) for f in manifest["deadletter_files"]]
    return pa.concat_tables(tables).to_pylist() if tables else []


def _timestamps(out, split="test"):
    rows = contracts.open_dataset(str(out)).read_split(split).to_pylist()
    return {r["user_id"]: r["timestamps"] for r in rows}


def test_out_of_range_and_negative_timestamps_are_dead_letters(tmp_path):
    csv = _write(tmp_path / "e.csv", HEADER + "u1,a,100\nu1,b,1e19\nu1,c,-5\nu1,d,200\n"
                 "u1,e,99999999999999999999999999\n")
    jl = _write(tmp_path / "e.jsonl", '{"user_id": "u2", "item_id": "a", "timestamp": 10}\n'
                + json.dumps({"user_id": "u2", "item_id": "b", "timestamp": 10 ** 30}) + "\n")
    for src, fmt, n_bad in ((csv, "csv", 3), (jl, "jsonl", 1)):
        out = tmp_path / fmt
        m = _run([src], fmt, out)
        by = m["counts"]["events_dead_lettered"]["by_reason"]
        assert by["timestamp_out_of_range"] == n_bad
        assert contracts.check_invariants(m) == []
        assert all(0 <= t < 2 ** 40 for ts in _timestamps(out).values() for t in ts)
        dl = _deadletters(out, m)
        assert {d["field"] for d in dl} == {"timestamp"}
    assert sorted(d["row"] for d in _deadletters(tmp_path / "csv", _run([csv], "csv", tmp_path / "csv"))) == [3, 4, 6]


@pytest.mark.parametrize("unit,scale", [("ms", 1000), ("us", 10 ** 6), ("ns", 10 ** 9)])
def test_time_unit_converts_to_seconds_and_is_recorded(tmp_path, unit, scale):
    secs = [1_600_000_000, 1_600_000_100, 1_600_000_050]
    csv = _write(tmp_path / "e.csv", HEADER + "".join(f"u1,i{k},{s * scale + 7}\n" for k, s in enumerate(secs)))
    pq_path = str(tmp_path / "e.parquet")
    pq.write_table(pa.table({"user_id": ["u2"] * 3, "item_id": ["a", "b", "c"],
                             "timestamp": pa.array([s * scale for s in secs], pa.int64())}), pq_path)
    for src, fmt in ((csv, "csv"), (pq_path, "parquet")):
        out = tmp_path / f"{fmt}-{unit}"
        m = _run([src], fmt, out, time_unit=unit)
        assert m["parameters"]["time_unit"] == unit
        ts = list(_timestamps(out).values())[0]
        assert ts == sorted(secs), (fmt, ts)
    with pytest.raises(InputError, match="time unit"):
        _run([csv], "csv", tmp_path / "bad", time_unit="minutes")


def test_truncated_compressed_input_fails_unless_allowed(tmp_path):
    body = HEADER + "".join(f"u{i % 7},i{i % 13},{i}\n" for i in range(20000))
    gz = gzip.compress(body.encode())
    (tmp_path / "t.csv.gz").write_bytes(gz[: len(gz) // 2])
    src = str(tmp_path / "t.csv.gz")
    for runner in (lambda **kw: _run([src], "csv", tmp_path / "o", **kw),
                   lambda **kw: reference.run(plan.TokenizeOptions(inputs=[src], format="csv",
                                                                   output=str(tmp_path / "o"), **kw))):
        with pytest.raises(InputError, match=r"t\.csv\.gz.*truncated"):
            runner()
        assert not (tmp_path / "o" / contracts.MANIFEST).exists()
    m = _run([src], "csv", tmp_path / "ok", allow_truncated=True)
    assert m["counts"]["events_dead_lettered"]["by_reason"]["truncated_input"] == 1
    assert 0 < m["counts"]["events_accepted"] < 20000
    assert m["parameters"]["allow_truncated"] is True
    r = subprocess.run([sys.executable, "-m", "ptum.cli", "tokenize", "--input", src, "--format", "csv",
                        "--output", str(tmp_path / "cli")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "t.csv.gz" in lines[0] and "--allow-truncated" in lines[0], r.stderr


def test_newlines_inside_quoted_fields_keep_the_record(tmp_path):
    text = ("user_id,item_id,timestamp,behavior\n"
            'u1,a,1,"multi\nline, with comma"\n'
            "u1,b,2,click\n"
            'u1,c,3,"x""y\n\nz"\n'          # escaped quote, blank line inside the field
            "u2,a,4\n"                      # wrong column count: its own dead letter
            "u2,b,5,click\n")
    csv = _write(tmp_path / "e.csv", text)
    # Tiny chunks: a chunk boundary may fall inside a quoted field.
    for chunk in (1 << 20, 8, 24):
        out = tmp_path / f"o{chunk}"
        m = _run([csv], "csv", out, chunk_bytes=chunk)
        c = m["counts"]
        assert c["users"] == 2 and c["events_accepted"] == 4, (chunk, c)
        assert {k: v for k, v in c["events_dead_lettered"]["by_reason"].items() if v} == {"wrong_column_count": 1}
        assert [d["row"] for d in _deadletters(out, m)] == [8]   # the file's own line number
        ds = contracts.open_dataset(str(out))
        beh = ds.read_vocab_table(contracts.BEHAVIORS_VOCAB).column("behavior").to_pylist()
        assert "multi\nline, with comma" in beh and 'x"y\n\nz' in beh


def test_stray_quote_costs_one_line(tmp_path):
    csv = _write(tmp_path / "e.csv", HEADER + 'u1,"a,1\n' + "".join(f"u1,i{k},{k}\n" for k in range(50)))
    m = _run([csv], "csv", tmp_path / "o")
    c = m["counts"]
    assert c["events_accepted"] == 50 and c["events_dead_lettered"]["total"] == 1


def test_bom_and_quoted_header_names(tmp_path):
    csv = tmp_path / "e.csv"
    csv.write_bytes(b'\xef\xbb\xbf"user_id","item_id","timestamp"\nu1,a,1\nu1,b,2\n')
    m = _run([str(csv)], "csv", tmp_path / "o")
    assert m["counts"]["events_accepted"] == 2
    nohdr = tmp_path / "n.csv"
    nohdr.write_bytes(b"\xef\xbb\xbfu1,a,1\nu1,b,2\n")
    m = _run([str(nohdr)], "csv", tmp_path / "n", header=False, names=("user_id", "item_id", "timestamp"))
    ds = contracts.open_dataset(str(tmp_path / "n"))
    assert m["counts"]["users"] == 1
    assert {u for split in ds.manifest["splits"] for u in ds.read_split(split).column("user_id").to_pylist()} == {"u1"}
    jl = tmp_path / "e.jsonl"
    jl.write_bytes(b'\xef\xbb\xbf{"user_id": "u1", "item_id": "a", "timestamp": 1}\n')
    assert _run([str(jl)], "jsonl", tmp_path / "j")["counts"]["events_dead_lettered"]["total"] == 0


def test_catalog_with_movielens_columns(tmp_path):
    events = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n1,20,3.5,6\n2,10,5,7\n")
    movies = _write(tmp_path / "movies.csv", 'movieId,title,genres\n10,"Heat (1995)",Action|Crime\n'
                    "20,Toy Story (1995),Animation|Children's\n")
    cols = Columns(user="userId", item="movieId", time="timestamp", behavior=None, value="rating")
    m = _run([events], "csv", tmp_path / "o", columns=cols, items_catalog=movies)
    cat = pq.read_table(tmp_path / "o" / contracts.VOCAB_DIR / "catalog.parquet").to_pylist()
    by_item = {r["item_id"]: r for r in cat}
    assert by_item["10"]["title"] == "Heat (1995)" and by_item["10"]["categories"] == "Action|Crime"
    assert by_item["20"]["token_id"] > 0
    assert m["counts"]["events_accepted"] == 3
    bad = _write(tmp_path / "bad.csv", "id,name\n1,x\n")
    with pytest.raises(InputError, match="bad.csv.*movieId"):
        _run([events], "csv", tmp_path / "b", columns=cols, items_catalog=bad)


def test_nan_label_is_missing_not_a_class():
    from ptum.data.batches import Rows
    from ptum.training.finetune import join_labels

    rows = Rows.from_table(pa.table({
        "user_id": ["a", "b", "c", "d"], "item_ids": [[1], [2], [3], [4]],
        "behavior_ids": [[1], [1], [1], [1]], "timestamps": [[0], [0], [0], [0]]}))
    labels = pa.table({"user_id": ["a", "b", "c", "d"], "score": [1.0, float("nan"), 2.0, 1.0]})
    _, classes, y, report = join_labels(rows, labels, "score")
    assert classes == ["1.0", "2.0"] and report["missing_values"] == 1 and len(y) == 3


def test_concurrent_run_into_one_folder_is_refused(tmp_path):
    csv = _write(tmp_path / "e.csv", HEADER + "u1,a,1\nu1,b,2\n")
    out = tmp_path / "o"
    with sink.output_lock(str(out), "tokenize"):
        with pytest.raises(InputError, match="another ptum run"):
            _run([csv], "csv", out)
        r = subprocess.run([sys.executable, "-m", "ptum.cli", "tokenize", "--input", csv, "--format", "csv",
                            "--output", str(out)], capture_output=True, text=True)
        assert r.returncode == 2 and "another ptum run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (out / contracts.MANIFEST).exists()
    m = _run([csv], "csv", out)     # the lock is gone with its holder
    assert m["counts"]["events_accepted"] == 2


def test_folder_inputs_read_the_format_s_files_and_empty_inputs_say_what_they_are(tmp_path):
    from ptum.data.ingest import plan, reference
    from ptum.data.ingest.formats import InputError

    def opts(path, **kw):
        return plan.TokenizeOptions(inputs=[str(path)], format="csv", output=str(tmp_path / "out"), **kw)

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "events.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2\nu2,i1,3\n")
    (logs / "more.csv.gz").write_bytes(__import__("gzip").compress(b"user_id,item_id,timestamp\nu3,i2,4\n"))
    (logs / "NOTES.md").write_text("how these logs were made\n")
    (logs / "_SUCCESS").write_text("")
    specs, _ = plan.plan_inputs(opts(logs))
    assert [os.path.basename(s.path) for s in specs] == ["events.csv", "more.csv.gz"]
    assert reference.run(opts(logs))["counts"]["events_accepted"] == 4
    # A glob names its files itself: read whatever it matches.
    with pytest.raises(InputError, match="NOTES.md: missing column"):
        plan.plan_inputs(opts(logs / "*"))
    cases = [(tmp_path / "empty_folder", "the folder holds no file"),
             (tmp_path / "notes_only", r"no .csv file among its 1 file\(s\) \(README.md\)"),
             (tmp_path / "empty.csv", "empty file .no header line."),
             (tmp_path / "header.csv", r"hold no record \(empty, or a header line only\)")]
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "notes_only").mkdir()
    (tmp_path / "notes_only" / "README.md").write_text("x")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("user_id,item_id,timestamp\n")
    for path, message in cases:
        with pytest.raises(InputError, match=message):
            reference.run(opts(path))
