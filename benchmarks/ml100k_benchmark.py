"""MovieLens-100K next-item: ours vs RecBole SASRec and BERT4Rec on our exact sequences and split.

    python benchmarks/ml100k_benchmark.py --ml100k ../shared/data/ml-100k --recbole-python PATH/bin/python

RecBole runs in its own venv (benchmarks/recbole_peer.py) on our sequences as an atomic .inter
file with ordinal timestamps, so its leave-one-out split (order TO, LS valid_and_test) equals
ours. Same max length (50) and embedding size (64); full ranking with history excluded on both
sides. `--parallel` trains the peers side by side (one torch thread each); each peer's result
is kept in --work, so an interrupted benchmark resumes with the peers it lacks.
Writes benchmarks/results/ml100k.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common, recbole_peer  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ml100k", default="../shared/data/ml-100k")
    ap.add_argument("--work", default="benchmarks/work/ml100k")
    ap.add_argument("--recbole-python", default="benchmarks/work/recbole-venv/bin/python")
    ap.add_argument("--config", default="configs/ml100k-nextitem.yaml")
    ap.add_argument("--models", nargs="+", default=["SASRec", "BERT4Rec"])
    ap.add_argument("--recbole-max-epochs", type=int, default=200)
    ap.add_argument("--recbole-stopping-step", type=int, default=10)
    ap.add_argument("--parallel", action="store_true", help="train the peers at the same time, 1 thread each")
    args = ap.parse_args()
    from concurrent.futures import ThreadPoolExecutor

    from ptum.config import PTUMConfig
    from ptum.data.contracts import open_dataset
    from ptum.data.ingest import plan, reference
    from ptum.evaluation.ranking import evaluate_model
    from ptum.training.pretrain import pretrain

    data = os.path.join(args.work, "data")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        reference.run(plan.TokenizeOptions(inputs=[args.ml100k], format="movielens", output=data))
    ds = open_dataset(data)
    rb = os.path.join(args.work, "recbole")
    recbole_peer.write_inter(ds, rb, "ml100kptum")
    settings = {"MAX_ITEM_LIST_LENGTH": 50, "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
                "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "train_batch_size": 256,
                "learning_rate": 1e-3, "epochs": args.recbole_max_epochs, "stopping_step": args.recbole_stopping_step}
    if args.parallel:
        os.environ["RECBOLE_THREADS"] = "1"

    def peer(m):
        cache = os.path.join(rb, f"{m}_result.json")
        if os.path.exists(cache):
            cached = json.load(open(cache))
            if cached.get("settings") == settings:
                return m, cached
        try:
            r = recbole_peer.run(args.recbole_python, m, rb, "ml100kptum", settings, log_prefix=m)
        except RuntimeError as e:
            return m, {"error": str(e)[-2000:]}
        r["settings"] = settings
        common.write_json(cache, r)
        return m, r

    results = {}
    with ThreadPoolExecutor(max_workers=len(args.models) if args.parallel else 1) as pool:
        for m, r in pool.map(peer, args.models):
            if "error" in r:
                results[f"recbole_{m}"] = r
                print(m, "failed", r["error"], flush=True)
                continue
            best_epoch = max(r["curve"], key=lambda e: e["valid_ndcg@10"])["epoch"] if r["curve"] else None
            results[f"recbole_{m}"] = {
                "ndcg@10": r["test"]["ndcg@10"], "recall@10": r["test"]["recall@10"],
                "valid_ndcg@10": r["best_valid"]["ndcg@10"], "train_seconds": r["fit_seconds"],
                "epochs": r["epochs"], "best_epoch": best_epoch,
                "stopped_by": "early stopping" if r["epochs"] < args.recbole_max_epochs else "epoch cap",
                "curve": r["curve"]}
            print(m, {k: v for k, v in results[f"recbole_{m}"].items() if k != "curve"}, flush=True)
    out_model = os.path.join(args.work, "ptum_model")
    t0 = time.time()
    if not os.path.exists(os.path.join(out_model, "metadata.json")):
        pretrain(data, out_model, PTUMConfig.load(args.config), log=print)
    meta = json.load(open(os.path.join(out_model, "metadata.json")))
    m = evaluate_model(out_model, data, "test")
    results["ptum"] = {"ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"],
                       "ndcg@10_unfiltered": m["ndcg@10_unfiltered"], "valid_ndcg@10": meta["valid"]["ndcg@10"],
                       "train_seconds": meta["train_seconds"], "wall_seconds_incl_eval": round(time.time() - t0, 1),
                       "epochs": meta["epochs_run"], "best_epoch": meta["best_epoch"], "stopped_by": "early stopping"
                       if meta["epochs_run"] < PTUMConfig.load(args.config).train.epochs else "epoch cap",
                       "curve": common.ptum_curve(out_model)}
    out = common.envelope(" ".join(["python"] + sys.argv))
    out.update({"models": results, "config_files": [args.config],
                "protocol": "our leave-one-out split of ML-100K fed to RecBole as ordinal timestamps; max len 50, "
                            "dim 64, 2 layers, 2 heads, CE over all items, full ranking, history excluded",
                "recbole_limits": {"max_epochs": args.recbole_max_epochs, "stopping_step": args.recbole_stopping_step,
                                   "parallel_one_thread_each": args.parallel}})
    at_cap = [e for e in results["ptum"]["curve"] if e["epoch"] == args.recbole_max_epochs]
    out["notes"] = (f"RecBole peers capped at {args.recbole_max_epochs} epochs"
                    + (", trained side by side with one torch thread each" if args.parallel else "")
                    + "; train_seconds are wall times measured while other jobs (test suites) may share the"
                      " machine: read them as rough" + (f"; ours at epoch {args.recbole_max_epochs}: valid ndcg@10 "
                                                 f"{at_cap[0]['valid_ndcg@10']:.4f}" if at_cap else ""))
    cols = ["model", "ndcg@10", "recall@10", "valid_ndcg@10", "epochs", "best_epoch", "stopped_by", "train_seconds"]
    rows = [{"model": k, **{c: (f"{v[c]:.4f}" if isinstance(v.get(c), float) and c != "train_seconds"
                                else v.get(c, "")) for c in cols[1:]}} for k, v in results.items()]
    common.write_result("ml100k", out, cols, rows)
    common.plot_curves("ml100k", {k: r["curve"] for k, r in results.items() if r.get("curve")}, "epoch", "epoch",
                       "ML-100K next-item: training curves")


if __name__ == "__main__":
    main()
