"""Tokenization throughput: the Beam job vs the pure-pyarrow reference, same data, same run.

    python benchmarks/tokenize_benchmark.py [--sizes 1000000 5000000] [--modes in_memory]

Logs: the sample generator's 1M-event log; the 5M log is 5 copies with renamed users
(same distribution, 5x the users). Beam time is wall time of `job.run` including
pipeline construction and runner start-up (what a user pays); the reference is
`reference.run` on the same files. Both write the same dataset.
Writes benchmarks/results/tokenize.json and tokenize.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def make_logs(work: str, events: int, base_csv: str) -> str:
    path = os.path.join(work, f"events_{events}.csv")
    if os.path.exists(path):
        return path
    with open(base_csv, "rb") as f:
        header = f.readline()
        body = f.read()
    base_events = body.count(b"\n")
    copies = max(1, round(events / base_events))
    with open(path + ".tmp", "wb") as out:
        out.write(header)
        for k in range(copies):
            out.write(body if k == 0 else body.replace(b"user_", f"user{k}_".encode()))
    os.replace(path + ".tmp", path)
    return path


def base_log(work: str) -> str:
    """The sample generator's ~1.2M-event log (33k users, 20k items), made once under `work`."""
    from ptum.data.generate import generate

    os.makedirs(work, exist_ok=True)
    base = os.path.join(work, "base")
    if not os.path.exists(os.path.join(base, "events.csv")):
        generate(base, users=33_000, items=20_000, seed=11, mean_events=30)
    return os.path.join(base, "events.csv")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--modes", nargs="+", default=["in_memory"],
                    help="FnApiRunner modes: in_memory, multi_processing")
    ap.add_argument("--work", default="benchmarks/work/tokenize")
    args = ap.parse_args()
    from ptum.data.ingest import plan, reference, job

    base_csv = base_log(args.work)
    rows = []
    for size in args.sizes:
        logs = make_logs(args.work, size, base_csv)
        opts = dict(inputs=[logs], format="csv", num_shards=8)
        out_ref = os.path.join(args.work, "out_ref")
        t0 = time.perf_counter()
        m_ref = reference.run(plan.TokenizeOptions(output=out_ref, **opts))
        t_ref = time.perf_counter() - t0
        for mode in args.modes:
            out_beam = os.path.join(args.work, f"out_beam_{mode}")
            beam_args = [f"--direct_running_mode={mode}"]
            if mode == "multi_processing":
                beam_args.append("--direct_num_workers=2")
            t0 = time.perf_counter()
            m_beam = job.run(plan.TokenizeOptions(output=out_beam, **opts), beam_args)
            t_beam = time.perf_counter() - t0
            assert m_beam["counts"] == m_ref["counts"] and m_beam["vocab_hash"] == m_ref["vocab_hash"]
            events = m_ref["counts"]["events_read"]
            rows.append({"events": events, "beam_seconds": round(t_beam, 2), "pyarrow_seconds": round(t_ref, 2),
                         "ratio": round(t_beam / t_ref, 3), "runner_mode": f"FnApiRunner {mode}",
                         "beam_events_per_s": round(events / t_beam), "pyarrow_events_per_s": round(events / t_ref)})
            print(rows[-1], flush=True)
            shutil.rmtree(out_beam, ignore_errors=True)
        shutil.rmtree(out_ref, ignore_errors=True)
    growth = {}
    for mode in args.modes:
        r = [x for x in rows if x["runner_mode"].endswith(mode)]
        if len(r) >= 2:
            growth[mode] = {"events_x": round(r[-1]["events"] / r[0]["events"], 2),
                            "beam_time_x": round(r[-1]["beam_seconds"] / r[0]["beam_seconds"], 2),
                            "pyarrow_time_x": round(r[-1]["pyarrow_seconds"] / r[0]["pyarrow_seconds"], 2)}
    result = common.envelope(" ".join(["python"] + sys.argv))
    result.update({"sizes": rows, "growth": growth, "goal": "ratio <= 1.2 at >= 5M events, linear in events"})
    common.write_result("tokenize", result,
                        ["events", "runner_mode", "beam_seconds", "pyarrow_seconds", "ratio",
                         "beam_events_per_s", "pyarrow_events_per_s"], rows)


if __name__ == "__main__":
    main()
