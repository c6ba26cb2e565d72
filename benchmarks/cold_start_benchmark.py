"""Cold start on Amazon Beauty (S3-Rec preprocessing): `ptum cold-start` as a user runs it.

    python benchmarks/cold_start_benchmark.py --beauty ../shared/data/beauty-s3rec/Beauty.txt \
        --attributes ../shared/data/beauty-s3rec/Beauty_item2attributes.json \
        [--seconds 1500] [--id-seconds 600] [--work benchmarks/work/cold_start] [--seeds 0,1,2]

Tokenizes Beauty (skipped when --work holds the dataset), then runs
`ptum cold-start --data D --output O --attributes A` (5% of the test targets' items held out of
training, Semantic IDs from attributes alone, configs beauty-generative and beauty capped at
--seconds / --id-seconds of training), once per seed (a finished run is read, not re-run), and
writes benchmarks/results/cold_start.{json,md} (cold_start_content_only with --collaborative-weight 0).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common  # noqa: E402
from ptum.training.cold_start import NAMES  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--beauty", required=True)
    p.add_argument("--attributes", required=True)
    p.add_argument("--work", default="benchmarks/work/cold_start")
    p.add_argument("--data", default=None, help="an already tokenized Beauty dataset (else tokenized into --work)")
    p.add_argument("--seconds", type=float, default=1500)
    p.add_argument("--id-seconds", type=float, default=600)
    p.add_argument("--seeds", default="0", help="comma-separated: one run per seed (which items are new, the "
                   "models' init); with more than one, the tables give mean +- sd")
    p.add_argument("--collaborative-weight", type=float, default=1.0,
                   help="0: Semantic IDs from the attributes alone (the run goes to --work/cold-content)")
    p.add_argument("--epochs", type=int, default=None, help="train the generative model this many epochs instead "
                   "of for --seconds")
    args = p.parse_args()
    from ptum.data.ingest import job, plan

    data = args.data or os.path.join(args.work, "data")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        job.run(plan.TokenizeOptions(inputs=[args.beauty], format="sequence-lines", output=data))
    content_only = args.collaborative_weight == 0
    budget = [f"train.epochs={args.epochs}", "train.max_train_seconds=0"] if args.epochs else \
        [f"train.max_train_seconds={args.seconds}"]
    seeds = [int(x) for x in args.seeds.split(",")]
    reports = [_run(args, data, seed, content_only, budget) for seed in seeds]
    rows = _rows(reports)
    cold = {s: round(r["cold"].get("generative_prefix_capped", {}).get("recall@10", float("nan")), 4)
            for s, r in zip(seeds, reports)}
    knn = {s: round(r["cold"]["content_knn_capped"]["recall@10"], 4) for s, r in zip(seeds, reports)}
    report = reports[0]
    result = {**common.envelope(" ".join(["python", *sys.argv])), "reports": dict(zip(map(str, seeds), reports)),
              "notes": f"{report['new_items']} new items (share {report['share']}), at most "
                       f"{report['new_items_cap']} in a top-{report['k']} list (epsilon {report['epsilon']}); "
                       f"Semantic IDs from {'the attributes alone' if content_only else 'attributes + the id model'}; "
                       f"generative training {f'{args.epochs} epochs' if args.epochs else f'capped at {args.seconds:.0f} s'}"
                       f", id model capped at {args.id_seconds:.0f} s; seeds {seeds}"
                       + (f" (mean +- sd over them; cold Recall@10 per seed, TIGER-style generative "
                          f"{cold} vs content KNN {knn})" if len(seeds) > 1 else "")}
    common.write_result(("cold_start_content_only" if content_only else "cold_start"), result,
                        ["users", "ranker", "recall@5", "recall@10", "ndcg@5", "ndcg@10"], rows)


def _run(args, data: str, seed: int, content_only: bool, budget) -> dict:
    """One `ptum cold-start` run (skipped when its report is there), its report."""
    out = os.path.join(args.work, "cold-content" if content_only else "cold") + (f"_seed{seed}" if seed else "")
    if not os.path.exists(os.path.join(out, "report.json")):
        command = [sys.executable, "-m", "ptum.cli", "cold-start", "--data", data, "--output", out,
                   "--attributes", args.attributes, "--seed", str(seed),
                   "--collaborative-weight", str(args.collaborative_weight),
                   *[x for b in budget for x in ("--set", b)], "--id-set", f"train.max_train_seconds={args.id_seconds}"]
        subprocess.run(command, check=True)
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def _rows(reports) -> list:
    """One row per user group and ranker: the metric, or mean +- sd over the seeds' reports."""
    keys = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
    rows = []
    for group in ("cold", "warm"):
        users = sorted({r["users"][group] for r in reports})
        for name, label in NAMES.items():
            ms = [r[group][name] for r in reports if r[group].get(name)]
            if len(ms) != len(reports):
                continue
            mean, sd = common.mean_sd(ms, keys)
            cell = (lambda k: f"{mean[k]:.4f}") if len(ms) == 1 else (lambda k: f"{mean[k]:.4f} ± {sd[k]:.4f}")
            rows.append({"users": f"{group} ({'/'.join(f'{u:,}' for u in users)})", "ranker": label,
                         **{k: cell(k) for k in keys}})
    return rows

if __name__ == "__main__":
    main()
