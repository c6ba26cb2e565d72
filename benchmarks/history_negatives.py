"""Does training rank as evaluation does? objective.exclude_history on and off, over seeds
(or any one config key's values: --key and --values).

    python benchmarks/history_negatives.py --data ml100k/ --config configs/ml100k-nextitem.yaml \
        --name ml100k --work /tmp/hn [--seeds 3]
    python benchmarks/history_negatives.py --data ml100k/ --key train.lr_decay_patience --values 0,2 \
        --result lr_decay_ml100k --work /tmp/lr

`ptum evaluate` and the served `top_k` leave a user's history items out of the ranking; with
`objective.exclude_history` the next-item softmax leaves them out of the negatives too. For each
seed (train.seed 0 .. N-1) and each setting, one `ptum pretrain` (skipped when <work>/<setting>_s<seed>
holds a finished model) and a test evaluation (leave-one-out, full ranking). Writes
benchmarks/results/history_negatives_<name>.{json,md} (or <result>.{json,md}): per seed, and
mean and spread; the relative gain is of the last value over the first.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common  # noqa: E402

METRICS = ("ndcg@10", "recall@10", "ndcg@10_unfiltered")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a tokenized dataset (ptum tokenize)")
    ap.add_argument("--config", default="configs/ml100k-nextitem.yaml")
    ap.add_argument("--name", default="ml100k")
    ap.add_argument("--work", default="benchmarks/work/history_negatives")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--key", default="objective.exclude_history", help="the config key compared")
    ap.add_argument("--values", default="false,true", help="its values, comma-separated (the first: baseline)")
    ap.add_argument("--result", default=None, help="result file name (default: history_negatives_<name>)")
    args = ap.parse_args()
    from ptum.config import PTUMConfig
    from ptum.evaluation.ranking import evaluate_model
    from ptum.training.pretrain import pretrain

    runs = {}
    short = "ml_ex" if args.key == "objective.exclude_history" else args.key.rsplit(".", 1)[-1] + "_"
    values = args.values.split(",")
    for flag in values:
        per_seed = []
        for seed in range(args.seeds):
            out = os.path.join(args.work, f"{short}{flag}_s{seed}")
            if not os.path.exists(os.path.join(out, "metadata.json")):
                cfg = PTUMConfig.load(args.config, [f"{args.key}={flag}", f"train.seed={seed}"])
                pretrain(args.data, out, cfg, log=lambda s: print(f"[{flag} {seed}] {s}", flush=True))
            test = evaluate_model(out, args.data, "test")
            meta = json.load(open(os.path.join(out, "metadata.json")))
            per_seed.append({"seed": seed, **{m: test[m] for m in METRICS}, "best_epoch": meta["best_epoch"]})
            print(flag, seed, {m: round(test[m], 4) for m in METRICS}, flush=True)
        mean, sd = common.mean_sd(per_seed, METRICS)
        runs[f"{args.key.rsplit('.', 1)[-1]}={flag}"] = {"seeds": per_seed, "mean": mean, "std": sd}
    result = common.envelope(" ".join(["python"] + sys.argv))
    off, on = runs[next(iter(runs))]["mean"], runs[list(runs)[-1]]["mean"]
    result.update({"config": args.config, "runs": runs,
                   "relative_gain": {m: on[m] / off[m] - 1.0 for m in METRICS if off[m]},
                   "notes": "test split, leave-one-out, full ranking; headline metrics leave history items out"})
    rows = [{"setting": name, "seed": s["seed"], **{m: f"{s[m]:.4f}" for m in METRICS}, "best epoch": s["best_epoch"]}
            for name, r in runs.items() for s in r["seeds"]]
    rows += [{"setting": name, "seed": "mean ± sd", **{m: f"{r['mean'][m]:.4f} ± {r['std'][m]:.4f}" for m in METRICS}}
             for name, r in runs.items()]
    common.write_result(args.result or f"history_negatives_{args.name}", result, ["setting", "seed", *METRICS, "best epoch"], rows)


if __name__ == "__main__":
    main()
