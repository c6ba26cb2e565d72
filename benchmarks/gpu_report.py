"""Turn the files `benchmarks/gpu_beauty.sh` wrote on a lent GPU machine into
benchmarks/results/gpu.{json,md} (issue 14: Beauty under JAX with bf16, throughput and time to
valid NDCG@10 0.0500).

    python benchmarks/gpu_report.py --run "run 1=<fetched dir>" --run "run 2=<fetched dir>" \
        --data .devdata/beauty --command "<the device command of each run>"

Each fetched dir holds gpu.txt and one folder per precision (history.json, metadata.json,
test.json, wall.json). The numbers are read off those files; nothing is re-measured here.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

TARGET = 0.0500
BAR = 0.0504  # best published test NDCG@10 we hold ourselves to (DESIGN.md)


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def train_targets(data: str) -> int:
    """Next-item targets per epoch with nbp_from=every: every train event but each row's first."""
    from ptum.data import contracts
    ds = contracts.open_dataset(data)
    lengths = ds.read_split("train", columns=["length"]).column("length").to_numpy()
    return int((lengths - 1).clip(min=0).sum())


def summarize(history, targets, cap_seconds):
    # history "seconds" is the fit clock at the end of the epoch's training (earlier epochs'
    # validation included); the epoch's own training time is the difference less the last validation.
    train = [history[0]["seconds"]] + [history[i]["seconds"] - history[i - 1]["seconds"]
                                       - history[i - 1].get("valid_seconds", 0.0) for i in range(1, len(history))]
    steady = train[1:]
    reached = next((h for h in history if (h.get("valid_ndcg@10") or 0) >= TARGET), None)
    best = max(history, key=lambda h: h.get("valid_ndcg@10") or -1)
    last = history[-1]
    stopped = ("time cap" if cap_seconds and last["seconds"] > cap_seconds else "early stopping")
    out = {
        "epochs_run": len(history),
        "first_epoch_seconds": round(train[0], 2),
        "first_validation_seconds": history[0].get("valid_seconds"),
        "steady_epoch_train_seconds_median": round(statistics.median(steady), 3) if steady else None,
        "steady_validation_seconds_median": round(statistics.median(h["valid_seconds"] for h in history[1:]), 2)
        if len(history) > 1 else None,
        "steady_targets_per_second": round(targets / statistics.median(steady)) if steady else None,
        "best_epoch": best["epoch"], "best_valid_ndcg@10": best.get("valid_ndcg@10"),
        "stopped_by": stopped,
    }
    if reached:
        out["epoch_reaching_target"] = reached["epoch"]
        out["seconds_to_target"] = round(reached["seconds"] + reached.get("valid_seconds", 0.0), 2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=DIR (fetched from the device)")
    ap.add_argument("--data", default=".devdata/beauty", help="the Beauty dataset the runs trained on")
    ap.add_argument("--command", action="append", default=[], help="the device command of each run, in order")
    ap.add_argument("--cap", action="append", type=float, default=[], help="SECONDS_CAP of each run, in order")
    args = ap.parse_args(argv)
    targets = train_targets(args.data)
    rows, runs, gpu, stack = [], {}, None, None
    for i, spec in enumerate(args.run):
        label, folder = spec.split("=", 1)
        cap = args.cap[i] if i < len(args.cap) else 0.0
        gpu = gpu or open(os.path.join(folder, "gpu.txt")).readline().strip()
        for prec in sorted(os.listdir(folder)):
            sub = os.path.join(folder, prec)
            history = _read(os.path.join(sub, "history.json"))
            if not os.path.isdir(sub) or not history:
                continue
            meta = _read(os.path.join(sub, "metadata.json")) or {}
            stack = stack or meta.get("stack")
            test = _read(os.path.join(sub, "test.json")) or {}
            s = summarize(history, targets, cap)
            s.update(precision=prec, seconds_cap=cap, test=test.get("ndcg@10"),
                     test_recall10=test.get("recall@10"),
                     pretrain_wall_seconds=(_read(os.path.join(sub, "wall.json")) or {}).get("pretrain_wall_seconds"),
                     command=args.command[i] if i < len(args.command) else None, history=history)
            name = f"{label} {prec}"
            runs[name] = s
            rows.append({"run": name, "stopped by": s["stopped_by"], "epochs": s["epochs_run"],
                         "1st epoch s (compile)": s["first_epoch_seconds"],
                         "epoch train s": s["steady_epoch_train_seconds_median"],
                         "targets/s": s["steady_targets_per_second"],
                         "validation s": s["steady_validation_seconds_median"],
                         "s to valid 0.0500": s.get("seconds_to_target", "not reached"),
                         "best valid": round(s["best_valid_ndcg@10"], 4),
                         "test ndcg@10": round(s["test"], 4) if s["test"] is not None else ""})
    result = {
        "stack": dict(stack or {}, name="device image (JAX backend; no TensorFlow there)"),
        "machine": {"cores": 16, "cpu": "x86-64 (device)", "gpu": gpu, "platform": "lent GPU machine"},
        "command": "; ".join(dict.fromkeys(c for c in args.command if c)) or "bash benchmarks/gpu_beauty.sh",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config_file": "configs/beauty.yaml",
        "train_targets_per_epoch": targets,
        "goal": f"valid ndcg@10 >= {TARGET} (time to it); test ndcg@10 vs the {BAR} bar",
        "runs": runs,
        "notes": ("seconds are the fit clock: the first epoch holds XLA compilation of every batch shape "
                  "(length buckets) and the first validation the ranking compile; steady epochs are "
                  "the median of the later ones. A run 'stopped by time cap' was cut by "
                  "train.max_train_seconds, so its test figure is not a finished model's."),
    }
    common.write_result("gpu", result, ["run", "stopped by", "epochs", "1st epoch s (compile)", "epoch train s",
                                        "targets/s", "validation s", "s to valid 0.0500", "best valid",
                                        "test ndcg@10"], rows)


if __name__ == "__main__":
    main()
