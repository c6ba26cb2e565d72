"""Does pre-training pay? Label efficiency of user-attribute prediction on MovieLens-100K.

    python benchmarks/finetune_ml100k.py --ml100k ../shared/data/ml-100k [--folds 5] [--fractions 5 10 25 50 100]
    python benchmarks/finetune_ml100k.py --config configs/user-embeddings.yaml --variants config \
        --split window --fractions 10 100          # the user-embedding config as it ships

Pre-training uses every user's behaviors (PTUM's setting); labels come only from the
training folds. Methods: (a) logistic regression on a bag of items, (b) the same network
from scratch, (c) PTUM pre-trained + frozen encoder, (d) PTUM pre-trained + full fine-tune.
Ablation at 10% labels: (d) with MBP-only / NBP-only / both pre-training (`--variants`: the
first is the model of (c)/(d); `config` = the config file as it is, no objective overrides).
5-fold CV over users, label fractions of the training fold (stratified, >= 1 per class),
fixed epochs (no validation carve-out from tiny label sets). Writes
benchmarks/results/finetune_ml100k.{json,md,png}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common  # noqa: E402

PRETRAIN = {
    "config": [],
    "both": ["objective.mbp=true", "objective.nbp=true"],
    "mbp": ["objective.mbp=true", "objective.nbp=false"],
    "nbp": ["objective.mbp=false", "objective.nbp=true"],
}


def folds_of(y, k, seed):
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold[members] = np.arange(len(members)) % k
    return fold


def subsample(train, y, fraction, seed):
    """Stratified fraction of the training fold, at least one user per class."""
    if fraction >= 1.0:
        return train
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y[train]):
        members = rng.permutation(train[y[train] == c])
        out.extend(members[: max(1, int(round(len(members) * fraction)))].tolist())
    return np.array(sorted(out), np.int64)


def bag_of_items(rows, row_idx, n_items):
    from scipy.sparse import csr_matrix
    from sklearn.preprocessing import normalize

    indptr, indices = [0], []
    for r in row_idx:
        items = np.unique(rows.items[rows.offsets[r]:rows.offsets[r + 1]])
        indices.extend(items.tolist())
        indptr.append(len(indices))
    x = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(row_idx), n_items))
    return normalize(x)


def lr_auc(x, y, train, test, n_classes):
    from sklearn.linear_model import LogisticRegression

    from ptum.training.finetune import classification_metrics

    clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
    clf.fit(x[train], y[train])
    prob = np.zeros((len(test), n_classes))
    prob[:, clf.classes_] = clf.predict_proba(x[test])
    return classification_metrics(y[test], prob, n_classes)["auc"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ml100k", default="../shared/data/ml-100k")
    ap.add_argument("--work", default="benchmarks/work/finetune_ml100k")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fractions", type=float, nargs="+", default=[5, 10, 25, 50, 100])
    ap.add_argument("--tasks", nargs="+", default=["gender", "age_group"])
    ap.add_argument("--config", default="configs/ml100k.yaml")
    ap.add_argument("--finetune-epochs", type=int, default=4, help="epochs of encoder + head (full mode)")
    ap.add_argument("--scratch-epochs", type=int, default=12, help="epochs of encoder + head from scratch")
    ap.add_argument("--head-epochs", type=int, default=100, help="epochs of the head on cached embeddings first")
    ap.add_argument("--variants", nargs="+", default=["both", "mbp", "nbp"], choices=sorted(PRETRAIN),
                    help="pre-training variants; the first is the model of (c) and (d), the others the ablation")
    ap.add_argument("--split", default="leave-one-out", choices=["leave-one-out", "window"],
                    help="tokenizer split (window: model selection by future-window recall, for profile configs)")
    ap.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch size")
    args = ap.parse_args()

    from ptum.config import PTUMConfig
    from ptum.data.contracts import open_dataset
    from ptum.training.finetune import (FinetuneConfig, classification_metrics, finetune, join_labels, latest_rows,
                                 load_encoder, read_table)
    from ptum.data.ingest import plan, reference
    from ptum.training.pretrain import pretrain

    t_start = time.time()
    data = os.path.join(args.work, "data")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        extra = {"split": "window", "window": 10} if args.split == "window" else {}
        reference.run(plan.TokenizeOptions(inputs=[args.ml100k], format="movielens", output=data, **extra))
    ds = open_dataset(data)
    models = {}
    main_variant = args.variants[0]
    for name in args.variants:
        overrides = PRETRAIN[name]
        out = os.path.join(args.work, f"pretrained_{name}")
        if not os.path.exists(os.path.join(out, "metadata.json")):
            pretrain(data, out, PTUMConfig.load(args.config, overrides), log=lambda s: print(f"[{name}] {s}"))
        models[name] = out
    rows = latest_rows(ds)
    labels = read_table(os.path.join(data, "labels", "users.parquet"))
    n_items = ds.num_item_tokens
    results = {"tasks": {}, "ablation": {}}
    ft_cfg = FinetuneConfig(epochs=args.finetune_epochs, head_epochs=args.head_epochs, patience=10 ** 6,
                            batch_size=args.batch_size, valid_fraction=0.0)
    empty = np.zeros(0, np.int64)

    def network_auc(model_dir, mode, scratch, row_idx, y, n_classes, train, test, seed):
        encoder, meta = load_encoder(model_dir, seed, from_scratch=scratch)
        cfg = FinetuneConfig(**{**ft_cfg.model_dump(), "mode": mode, "seed": seed,
                                **({"epochs": args.scratch_epochs} if scratch else {})})
        _, _, _, predict = finetune(encoder, meta, rows, cfg, row_idx, y, n_classes, train, empty,
                                    log=lambda s: None)
        return classification_metrics(y[test], predict(test), n_classes)["auc"]

    for task in args.tasks:
        row_idx, classes, y, report = join_labels(rows, labels, task)
        n_classes = len(classes)
        x_bag = bag_of_items(rows, row_idx, n_items)
        fold = folds_of(y, args.folds, seed=0)
        table = {m: {} for m in ("a_logreg_bag_of_items", "b_scratch", "c_ptum_frozen", "d_ptum_full")}
        ablation = {v: [] for v in args.variants}
        for frac in args.fractions:
            scores = {m: [] for m in table}
            for f in range(args.folds):
                test = np.flatnonzero(fold == f)
                train = subsample(np.flatnonzero(fold != f), y, frac / 100.0, seed=f)
                scores["a_logreg_bag_of_items"].append(lr_auc(x_bag, y, train, test, n_classes))
                main = models[main_variant]
                scores["b_scratch"].append(network_auc(main, "full", True, row_idx, y, n_classes, train, test, f))
                scores["c_ptum_frozen"].append(network_auc(main, "frozen", False, row_idx, y, n_classes,
                                                           train, test, f))
                scores["d_ptum_full"].append(network_auc(main, "full", False, row_idx, y, n_classes,
                                                         train, test, f))
                if frac == 10 and len(args.variants) > 1:
                    ablation[main_variant].append(scores["d_ptum_full"][-1])
                    for v in args.variants[1:]:
                        ablation[v].append(network_auc(models[v], "full", False, row_idx, y, n_classes,
                                                       train, test, f))
                print(task, frac, f, {k: round(v[-1], 4) for k, v in scores.items()}, flush=True)
            for m, v in scores.items():
                table[m][str(int(frac))] = {"auc_mean": float(np.mean(v)), "auc_std": float(np.std(v)),
                                            "n_folds": len(v), "folds": [float(s) for s in v]}
        results["tasks"][task] = table
        results["ablation"][task] = {f"pretrain_{v}": {"auc_mean": float(np.mean(s)), "auc_std": float(np.std(s)),
                                                       "n_folds": len(s)} for v, s in ablation.items() if s}
        results.setdefault("labels", {})[task] = report
    out = common.envelope(" ".join(["python"] + sys.argv))
    out.update(results)
    out["config_files"] = [args.config]
    out["variants"] = {v: PRETRAIN[v] for v in args.variants}
    out["split"] = args.split
    out["protocol"] = (f"{args.folds}-fold CV over users, stratified label fractions of the training fold "
                       f"(>=1 per class), one seed; fine-tune: {args.head_epochs} epochs of the {ft_cfg.head} head "
                       f"on cached frozen embeddings (standardised, L2 {ft_cfg.head_l2}/2n), then "
                       f"{args.finetune_epochs} epochs of encoder + head at lr {ft_cfg.learning_rate} x "
                       f"{ft_cfg.encoder_lr_scale} ({args.scratch_epochs} from scratch), "
                       "no early stopping; pre-training on all users' behaviors (no labels)")
    out["total_seconds"] = round(time.time() - t_start, 1)
    d10 = {t: (out["tasks"][t]["d_ptum_full"].get("10", {}).get("auc_mean"),
               out["tasks"][t]["b_scratch"].get("10", {}).get("auc_mean"),
               out["tasks"][t]["d_ptum_full"].get("100", {}).get("auc_mean"),
               out["tasks"][t]["a_logreg_bag_of_items"].get("100", {}).get("auc_mean")) for t in args.tasks}
    out["goal"] = {"text": "(d) beats (b) by >= 0.03 AUC at 10% labels; (d) >= (a) at 100%",
                   "per_task": {t: {"d_minus_b_at_10": (v[0] - v[1]) if None not in v[:2] else None,
                                    "d_minus_a_at_100": (v[2] - v[3]) if None not in v[2:] else None}
                                for t, v in d10.items()}}
    md_rows = []
    for t in args.tasks:
        for m, by in out["tasks"][t].items():
            md_rows.append({"task": t, "method": m, **{f"{k}%": f"{v['auc_mean']:.3f} ± {v['auc_std']:.3f}"
                                                      for k, v in by.items()}})
    common.write_result("finetune_ml100k", out, ["task", "method"] + [f"{int(f)}%" for f in args.fractions], md_rows)
    plot(out, args.tasks, args.fractions)


def plot(out, tasks, fractions):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2))
    axes = np.atleast_1d(axes)
    for ax, t in zip(axes, tasks):
        for m, by in out["tasks"][t].items():
            xs = [f for f in fractions if str(int(f)) in by]
            mean = np.array([by[str(int(f))]["auc_mean"] for f in xs])
            std = np.array([by[str(int(f))]["auc_std"] for f in xs])
            ax.plot(xs, mean, marker="o", label=m)
            ax.fill_between(xs, mean - std, mean + std, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{int(x)}%" for x in xs])
        ax.set_xlabel("share of training labels")
        ax.set_ylabel("test AUC (mean ± std over folds)")
        ax.set_title(f"ML-100K {t}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    common.save_plot(fig, "finetune_ml100k")


if __name__ == "__main__":
    main()
