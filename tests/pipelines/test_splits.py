"""Splittable reads: big uncompressed text files as line-aligned byte ranges, Parquet as runs of
row groups. Many splits must read exactly the rows of one read, in the same order, and dead
letters must still name the file's own lines."""
import gzip
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptum.data import contracts
from ptum.data.ingest import formats, plan, reader, reference, job


def _read(opts, split_bytes):
    """Every split of every input -> (events in order-key order, dead letters by file line)."""
    specs, _ = plan.plan_inputs(opts)
    splits = reader.plan_splits(specs, split_bytes)
    events, dead, lines = [], [], []
    for split in splits:
        for unit in reader.read_units(split, opts):
            if isinstance(unit, reader.RangeLines):
                lines.append((unit.index, unit.lines))
                continue
            ev, dl, _ = reader.parse_input_unit(unit, opts.max_line_bytes)
            events.append(ev)
            dead.append(dl)
    ev = pa.concat_tables(events).sort_by([("file_idx", "ascending"), ("row", "ascending")])
    dl = reader.file_line_numbers(pa.concat_tables(dead), lines)
    return splits, ev.drop(["row"]).to_pylist(), sorted(dl.to_pylist(), key=lambda r: (r["row"], r["reason"]))


def _messy_csv(path, n=600, seed=0):
    """A CSV with every kind of line a reader must handle, some far longer than a range."""
    rnd = random.Random(seed)
    out = ["\ufeffuser_id,item_id,timestamp,behavior"]
    for i in range(n):
        r = rnd.random()
        if r < 0.05:
            out.append("")                                         # blank: no record
        elif r < 0.10:
            out.append(f"u{i % 37},i{i % 11},not-a-time,click")   # dead letter
        elif r < 0.13:
            out.append(f"u{i % 37},i{i % 11}")                      # wrong column count
        elif r < 0.16:
            out.append(f'u{i % 37},"item, with comma {i}",{1000 + i},"click"')
        elif r < 0.18:
            out.append(f"u{i % 37},{'z' * 300},{1000 + i},view")    # longer than the small ranges
        elif r < 0.20:
            out.append(f"u{i % 37},i{i % 5},{1000 + i},buy\r")       # CRLF
        else:
            out.append(f"u{i % 37},i{i % 13},{1000 + i // 3},click")
    data = "\n".join(out).encode("utf-8")
    data = data.replace(b"u5,i3,", b"u5,i3\x00,", 1)                 # a NUL byte
    data += b"\nu9,\xff\xfe,5000,click"                              # undecodable, no final newline
    with open(path, "wb") as f:
        f.write(data)
    return data


@pytest.mark.parametrize("split_bytes", [1, 97, 1000, 4096])
def test_many_byte_ranges_read_exactly_the_rows_of_one_read(tmp_path, split_bytes):
    path = tmp_path / "events.csv"
    data = _messy_csv(path)
    opts = plan.TokenizeOptions(inputs=[str(path)], format="csv", output=str(tmp_path / "o"),
                                max_line_bytes=200, chunk_bytes=512)
    whole_splits, whole_events, whole_dead = _read(opts, 0)
    splits, events, dead = _read(opts, split_bytes)
    assert len(whole_splits) == 1 and len(splits) == -(-len(data) // split_bytes)
    assert events == whole_events
    assert dead == whole_dead
    reasons = {r["reason"] for r in dead}
    assert {"unparsable_timestamp", "wrong_column_count", "line_too_long", "nul_byte",
            "undecodable_bytes"} <= reasons
    # Dead letters name the file's own (1-based) lines.
    file_lines = data.split(b"\n")
    for r in dead:
        if r["reason"] not in ("nul_byte", "undecodable_bytes"):
            assert file_lines[r["row"] - 1].rstrip(b"\r")[:40] == r["raw"][:40], r


@pytest.mark.parametrize("fmt,text", [
    ("jsonl", '{"user_id": "u%d", "item_id": "i%d", "timestamp": %d}'),
    ("sequence-lines", "u%d i%d i%d"),
])
def test_byte_ranges_of_other_line_formats(tmp_path, fmt, text):
    path = tmp_path / "events.txt"
    lines = [text % (i % 17, i % 7, 100 + i) for i in range(300)]
    lines[40] = "{not json" if fmt == "jsonl" else "u-alone"
    path.write_text("\n".join(lines) + "\n")
    opts = plan.TokenizeOptions(inputs=[str(path)], format=fmt, output=str(tmp_path / "o"))
    _, whole_events, whole_dead = _read(opts, 0)
    splits, events, dead = _read(opts, 211)
    assert len(splits) > 10
    assert events == whole_events and dead == whole_dead
    assert [r["row"] for r in dead] == [41]


def test_line_ranges_cover_every_byte_once(tmp_path):
    rnd = random.Random(1)
    for trial in range(20):
        lines = [b"x" * rnd.choice([0, 1, 2, 5, 40]) for _ in range(rnd.randint(0, 60))]
        data = b"\n".join(lines) + rnd.choice([b"", b"\n", b"\n\n"])
        path = tmp_path / f"f{trial}"
        path.write_bytes(data)
        for size in (1, 2, 3, 7, 64, max(1, len(data))):
            got = b""
            for start in range(0, len(data), size):
                with reader.LineRange(str(path), start, min(len(data), start + size), block=4) as f:
                    while True:
                        block = f.read(rnd.randint(1, 9))
                        if not block:
                            break
                        got += block
            assert got == data, (trial, size)


def test_what_is_read_whole(tmp_path):
    big = "user_id,item_id,timestamp\n" + "".join(f"u{i},i{i},{i}\n" for i in range(400))
    (tmp_path / "plain.csv").write_text(big)
    with gzip.open(tmp_path / "packed.csv.gz", "wt") as f:
        f.write(big)
    # A quoted field holding a newline in the first MiB: cutting at newlines would break records.
    (tmp_path / "multiline.csv").write_text(big.replace("u3,i3,3\n", 'u3,"i\n3",3\n'))
    specs, _ = plan.plan_inputs(plan.TokenizeOptions(inputs=[str(tmp_path / "*")], format="csv",
                                                     output=str(tmp_path / "o")))
    parts = {os.path.basename(s.path): len(reader.plan_splits([s], 1000)) for s in specs}
    assert parts == {"plain.csv": -(-len(big) // 1000), "packed.csv.gz": 1, "multiline.csv": 1}
    assert all(len(reader.plan_splits([s], 0)) == 1 for s in specs)
    assert len(reader.plan_splits(specs[2:], len(big))) == 1          # not larger than one range
    with pytest.raises(formats.InputError, match="split-bytes"):
        plan.plan_inputs(plan.TokenizeOptions(inputs=[str(tmp_path / "plain.csv")], format="csv",
                                              output=str(tmp_path / "o"), split_bytes=-1))


def _tokenize_both(tmp_path, inputs, fmt, split_bytes, **kw):
    split = job.run(plan.TokenizeOptions(inputs=inputs, format=fmt, output=str(tmp_path / "split"),
                                         split_bytes=split_bytes, **kw))
    whole = reference.run(plan.TokenizeOptions(inputs=inputs, format=fmt, output=str(tmp_path / "whole"), **kw))
    assert split["vocab_hash"] == whole["vocab_hash"]
    assert split["counts"] == whole["counts"]
    for name in whole["splits"]:
        rows = [sorted(contracts.open_dataset(str(tmp_path / d)).read_split(name).to_pylist(),
                       key=lambda r: r["user_id"]) for d in ("split", "whole")]
        assert rows[0] == rows[1], name
    dead = [sorted(pa.concat_tables([pq.read_table(os.path.join(tmp_path, d, f)) for f in m["deadletter_files"]])
                   .select(["file", "row", "reason", "raw"]).to_pylist(), key=lambda r: (r["file"], r["row"]))
            for d, m in (("split", split), ("whole", whole))]
    assert dead[0] == dead[1]
    return split, dead[0]


def test_the_job_on_byte_ranges_writes_the_dataset_of_whole_files(sample_logs, tmp_path):
    logs, stats = sample_logs
    path = os.path.join(logs, "events.csv")
    size = os.path.getsize(path)
    m, dead = _tokenize_both(tmp_path, [path], "csv", size // 13, num_shards=2)
    assert m["counts"]["events_dead_lettered"]["total"] == stats.malformed == len(dead) > 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for r in dead:
        if r["reason"] not in ("undecodable_bytes", "nul_byte"):
            assert lines[r["row"] - 1][:50] == r["raw"][:50], r


def test_the_job_on_parquet_row_groups_writes_the_dataset_of_whole_files(tmp_path):
    n = 3000
    users = [f"u{i % 61}" for i in range(n)]
    users[1234] = ""                                      # a dead letter in a later row group
    table = pa.table({"user_id": users, "item_id": [f"i{(i * 7) % 53}" for i in range(n)],
                      "timestamp": pa.array(np.arange(n) // 4, pa.int64()),
                      "value": pa.array(np.arange(n) % 5, pa.float64())})   # (no NaN: rows compare with ==)
    path = str(tmp_path / "events.parquet")
    pq.write_table(table, path, row_group_size=200)
    spec = plan.plan_inputs(plan.TokenizeOptions(inputs=[path], format="parquet", output=str(tmp_path / "o")))[0][0]
    splits = reader.plan_splits([spec], 1)
    assert len(splits) == 15 and [s.first_row for s in splits[:3]] == [0, 200, 400]
    _, dead = _tokenize_both(tmp_path, [path], "parquet", 1)
    assert [(r["row"], r["reason"]) for r in dead] == [(1234, "empty_user_id")]


def test_cli_split_options(sample_logs, tmp_path):
    import subprocess
    import sys

    from ptum import cli

    logs, stats = sample_logs
    base = ["tokenize", "--input", os.path.join(logs, "events.csv"), "--format", "csv", "--output"]
    assert cli.tokenize_options(cli.build_parser().parse_args(base + ["o", "--no-split"])).split_bytes == 0
    assert cli.tokenize_options(cli.build_parser().parse_args(base + ["o"])).split_bytes == plan.DEFAULT_SPLIT_BYTES
    r = subprocess.run([sys.executable, "-m", "ptum.cli", "-q", *base, str(tmp_path / "d"), "--split-bytes", "20000"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    m = contracts.open_dataset(str(tmp_path / "d")).manifest
    assert m["parameters"]["split_bytes"] == 20000
    assert m["counts"]["events_read"] == stats.events
