"""How good are the exported user embeddings? Objectives compared as embedding consumers see them.

    python benchmarks/user_embeddings.py --dataset ml100k --data-path ../shared/data/ml-100k \
        [--runs user-embeddings ml100k-nextitem ml100k] [--repeats 5] [--fractions 0.1 1.0]
    python benchmarks/user_embeddings.py --dataset generated     # planted labels, no download

For each run (a config file in configs/, plus --set overrides): tokenize once with
`--split window --window W` (the last W behaviors of each user are the test window, the W
before them the validation window, pre-training sees neither), `ptum pretrain`,
`ptum export-embeddings` (the product path), `ptum evaluate-embeddings` on the exported
table (linear probes with the TF-IDF / SVD / random-projection / untrained baselines on the
same folds, future-window retrieval with frozen vs recomputed embeddings) and `ptum
evaluate --split test` (next-item NDCG@10, the trade-off). Everything through the CLI.
Writes benchmarks/results/user_embeddings_<dataset>.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    # name: (config file, overrides)
    "user-embeddings": ("configs/user-embeddings.yaml", []),
    "user-embeddings-future": ("configs/user-embeddings.yaml", ["objective.bag_future=10",
                                                                 "model.profile_newest=true"]),
    "user-embeddings-contrastive": ("configs/user-embeddings.yaml", ["objective.bag_contrastive=0.2"]),
    "user-embeddings-idf": ("configs/user-embeddings.yaml", ["objective.bag_target_weight=idf"]),
    "ml100k-nextitem": ("configs/ml100k-nextitem.yaml", []),
    "ml100k": ("configs/ml100k.yaml", []),
    "bag-only": ("configs/user-embeddings.yaml", ["objective.nbp=false"]),
    "user-embeddings-d128": ("configs/user-embeddings.yaml", ["model.embedding_dim=128"]),
    "nbp-profile-no-bag": ("configs/user-embeddings.yaml", ["objective.bag=false", "objective.nbp=true"]),
}


def ptum(*args, log=None):
    cmd = [os.path.join(os.path.dirname(sys.executable), "ptum"), *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if log:
        with open(log, "a") as f:
            f.write(" ".join(cmd) + "\n" + r.stdout[-5000:] + r.stderr[-5000:] + "\n")
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r.stdout, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["ml100k", "generated"], default="ml100k")
    ap.add_argument("--data-path", default=os.path.join(ROOT, "..", "shared", "data", "ml-100k"))
    ap.add_argument("--work", default="/tmp/ptum-user-embeddings")
    ap.add_argument("--runs", nargs="+", default=["user-embeddings", "ml100k-nextitem", "ml100k"])
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.1, 1.0])
    ap.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs under --work")
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    log = os.path.join(a.work, "commands.log")
    data = os.path.join(a.work, "data")
    if a.dataset == "ml100k":
        labels, columns = os.path.join(data, "labels", "users.parquet"), ["gender", "age_group"]
        tok = ["--input", a.data_path, "--format", "movielens"]
    else:
        logs = os.path.join(a.work, "logs")
        if not os.path.exists(os.path.join(logs, "users.csv")):
            ptum("generate", "--output", logs, "--users", "3000", "--items", "600", "--seed", "1", log=log)
        labels, columns = os.path.join(logs, "users.csv"), ["gender", "age_group"]
        tok = ["--input", os.path.join(logs, "events*.csv"), "--format", "csv"]
    if not (a.reuse and os.path.exists(os.path.join(data, "manifest.json"))):
        ptum("tokenize", *tok, "--output", data, "--split", "window", "--window", str(a.window), log=log)
    results = {}
    for name in a.runs:
        cfg, sets = RUNS[name]
        run_dir = os.path.join(a.work, name)
        model, emb, rep = (os.path.join(run_dir, x) for x in ("model", "emb", "report"))
        done = os.path.join(run_dir, "result.json")
        if a.reuse and os.path.exists(done):
            with open(done) as f:
                stored = json.load(f)
            # Reused only when it was made by the same config file and overrides.
            if stored.get("config") == cfg and stored.get("overrides") == sets + a.set:
                results[name] = stored
                continue
        os.makedirs(run_dir, exist_ok=True)
        overrides = [x for s in sets + a.set for x in ("--set", s)]
        _, train_s = ptum("pretrain", "--data", data, "--output", model, "--config", os.path.join(ROOT, cfg),
                          *overrides, log=log)
        ptum("export-embeddings", "--model", model, "--data", data, "--output", emb, log=log)
        ptum("evaluate-embeddings", "--embeddings", emb, "--data", data, "--labels", labels,
             *[x for c in columns for x in ("--label-column", c)], "--model", model, "--repeats", str(a.repeats),
             "--fractions", ",".join(str(f) for f in a.fractions), "--output", rep, log=log)
        out, _ = ptum("evaluate", "--model", model, "--data", data, "--split", "test", log=log)
        with open(os.path.join(rep, "report.json")) as f:
            report = json.load(f)
        with open(os.path.join(model, "metadata.json")) as f:
            meta = json.load(f)
        results[name] = {"config": cfg, "overrides": sets + a.set, "report": report,
                         "next_item_test": json.loads(out), "train_wall_seconds": round(train_s, 1),
                         "train_seconds": meta["train_seconds"], "best_epoch": meta["best_epoch"],
                         "select_metric": meta.get("select_metric"), "user_embedding": meta["user_embedding"]}
        common.write_json(done, results[name])
    rows = []
    for name, r in results.items():
        rep = r["report"]
        row = {"run": name, "config": r["config"] + (f" {' '.join(r['overrides'])}" if r["overrides"] else ""),
               "train s": round(r["train_seconds"]), "best epoch": r["best_epoch"],
               "window recall@10": f"{rep['future_window']['window_recall@10']:.4f}",
               "window ndcg@10": f"{rep['future_window']['window_ndcg@10']:.4f}",
               "next-item ndcg@10 (test)": f"{r['next_item_test']['ndcg@10']:.4f}",
               "recompute gain": f"{rep['future_window'].get('recompute_gain') or 0:+.3f}",
               "eff. rank": f"{rep['health']['effective_rank']:.1f}"}
        for col in columns:
            for frac in a.fractions:
                res = rep["probes"][col]["by_fraction"][str(frac)]
                row[f"{col} AUC @{frac:g}"] = f"{res['embeddings']['auc']['mean']:.3f}"
        rows.append(row)
    base_rows = []
    first = next(iter(results.values()))["report"]
    for col in columns:
        for frac in a.fractions:
            res = first["probes"][col]["by_fraction"][str(frac)]
            for feat in ("tfidf_bag", "tfidf_svd64", "tfidf_random_projection64"):
                base_rows.append({"baseline": feat, "label": col, "fraction": frac,
                                  "AUC": f"{res[feat]['auc']['mean']:.3f}"})
            for name, r in results.items():
                res_r = r["report"]["probes"][col]["by_fraction"][str(frac)]
                if "untrained_same_architecture" in res_r:
                    base_rows.append({"baseline": f"untrained ({name})", "label": col, "fraction": frac,
                                      "AUC": f"{res_r['untrained_same_architecture']['auc']['mean']:.3f}"})
    result = {**common.envelope("python benchmarks/user_embeddings.py " + " ".join(argv or sys.argv[1:])),
              "dataset": a.dataset, "window": a.window, "runs": results, "baselines": base_rows,
              "protocol": f"LR probe on standardised frozen exported embeddings, {a.repeats}x repeated stratified "
                          "5-fold, same folds for every feature set; future window = last W behaviors (test split "
                          "of --split window), history filtered",
              "config_files": sorted({r["config"] for r in results.values()})}
    columns_out = list(rows[0].keys()) if rows else []
    name = f"user_embeddings_{a.dataset}"
    common.write_result(name, result, columns_out, rows)
    with open(os.path.join(common.RESULTS, f"{name}.md"), "a") as f:
        f.write("\nBaselines on the same folds (probe AUC):\n\n" +
                common.markdown_table(["baseline", "label", "fraction", "AUC"], base_rows) + "\n")
    _plot(name, results, columns, a.fractions)
    return 0


def _plot(name, results, columns, fractions):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    frac = max(fractions)
    first = next(iter(results.values()))["report"]["probes"]
    feats = [(f"{n}", r["report"]["probes"]) for n, r in results.items()]
    feats += [(b, None) for b in ("tfidf_svd64", "tfidf_bag", "tfidf_random_projection64")]
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 4))
    axes = np.atleast_1d(axes)
    for ax, col in zip(axes, columns):
        vals, errs, labels = [], [], []
        for label, probes in feats:
            res = (probes or first)[col]["by_fraction"][str(frac)]
            m = res["embeddings" if probes else label]["auc"]
            vals.append(m["mean"])
            errs.append(m["mean"] - m["ci95"][0])
            labels.append(label)
        ax.barh(range(len(vals)), vals, xerr=errs, color=["C0"] * len(results) + ["C7"] * 3)
        ax.set_yticks(range(len(vals)), labels, fontsize=8)
        ax.set_xlim(0.5, max(vals) + 0.05)
        ax.set_xlabel(f"{col}: probe AUC (labels {frac:g})")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Frozen exported user embeddings vs bag-of-items baselines")
    common.save_plot(fig, name)


if __name__ == "__main__":
    sys.exit(main())
