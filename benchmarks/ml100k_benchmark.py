"""MovieLens-100K next-item: ours vs RecBole SASRec and BERT4Rec on our exact sequences and split.

    python benchmarks/ml100k_benchmark.py --ml100k ../shared/data/ml-100k --recbole-python PATH/bin/python

RecBole 1.2.1 needs its own venv (Python 3.11, `pip install torch==2.13.0 recbole==1.2.1 "numpy<2"
"pandas<2.3" "scipy<1.14" "setuptools<70"`). It gets our sequences as an atomic .inter file with
ordinal timestamps, so its leave-one-out split (order TO, LS valid_and_test) equals ours. Same
max length (50) and embedding size (64); full ranking with history excluded on both sides.
Writes benchmarks/results/ml100k.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common  # noqa: E402

RUNNER = r'''
import json, os, sys, time
import numpy as np
np.float = float  # RecBole's NDCG code uses the removed alias on some paths
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
from recbole.quick_start import run_recbole
work, model = sys.argv[1], sys.argv[2]
cfg = {"data_path": work, "dataset": "ml100kptum", "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
       "TIME_FIELD": "timestamp", "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
       "MAX_ITEM_LIST_LENGTH": 50, "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
       "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "train_batch_size": 256, "learning_rate": 1e-3,
       "epochs": 200, "stopping_step": 10, "loss_type": "CE", "train_neg_sample_args": None,
       "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
       "metrics": ["Recall", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "seed": 0,
       "reproducibility": True, "device": "cpu", "use_gpu": False, "show_progress": False,
       "checkpoint_dir": os.path.join(work, "saved")}
t = time.time()
res = run_recbole(model=model, config_dict=cfg)
out = {"train_seconds": round(time.time() - t, 1), "best_valid": {k: float(v) for k, v in res["best_valid_result"].items()},
       "test": {k: float(v) for k, v in res["test_result"].items()}}
print("RESULT " + json.dumps(out))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ml100k", default="../shared/data/ml-100k")
    ap.add_argument("--work", default="benchmarks/work/ml100k")
    ap.add_argument("--recbole-python", default="benchmarks/work/recbole-venv/bin/python")
    ap.add_argument("--config", default="configs/ml100k-nextitem.yaml")
    ap.add_argument("--models", nargs="+", default=["SASRec", "BERT4Rec"])
    args = ap.parse_args()
    from ptum.commands import evaluate_model
    from ptum.config import PTUMConfig
    from ptum.contracts import open_dataset
    from ptum.train import pretrain
    from pipelines.tokenize import core, reference

    data = os.path.join(args.work, "data")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        reference.run(core.TokenizeOptions(inputs=[args.ml100k], format="movielens", output=data))
    ds = open_dataset(data)
    rb = os.path.join(args.work, "recbole", "ml100kptum")
    os.makedirs(rb, exist_ok=True)
    test = ds.read_split("test").to_pylist()
    with open(os.path.join(rb, "ml100kptum.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for r in test:
            for pos, item in enumerate(r["item_ids"]):
                f.write(f"{r['user_id']}\t{item}\t{pos}\n")
    results = {}
    for m in args.models:
        proc = subprocess.run([args.recbole_python, "-c", RUNNER, os.path.join(args.work, "recbole"), m],
                              capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            results[f"recbole_{m}"] = {"error": proc.stderr[-2000:]}
            print(m, "failed", proc.stderr[-2000:], flush=True)
            continue
        r = json.loads(line[0][7:])
        results[f"recbole_{m}"] = {"ndcg@10": r["test"]["ndcg@10"], "recall@10": r["test"]["recall@10"],
                                   "valid_ndcg@10": r["best_valid"]["ndcg@10"], "train_seconds": r["train_seconds"]}
        print(m, results[f"recbole_{m}"], flush=True)
    out_model = os.path.join(args.work, "ptum_model")
    t0 = time.time()
    if not os.path.exists(os.path.join(out_model, "metadata.json")):
        pretrain(data, out_model, PTUMConfig.load(args.config), log=print)
    meta = json.load(open(os.path.join(out_model, "metadata.json")))
    m = evaluate_model(out_model, data, "test")
    results["ptum"] = {"ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"],
                       "ndcg@10_unfiltered": m["ndcg@10_unfiltered"], "valid_ndcg@10": meta["valid"]["ndcg@10"],
                       "train_seconds": meta["train_seconds"], "wall_seconds_incl_eval": round(time.time() - t0, 1)}
    out = common.envelope(" ".join(["python"] + sys.argv))
    out.update({"models": results, "config_files": [args.config],
                "protocol": "our leave-one-out split of ML-100K fed to RecBole as ordinal timestamps; max len 50, "
                            "dim 64, 2 layers, 2 heads, CE over all items, full ranking, history excluded"})
    rows = [{"model": k, **{c: (f"{v[c]:.4f}" if isinstance(v.get(c), float) else v.get(c, ""))
                            for c in ("ndcg@10", "recall@10", "valid_ndcg@10", "train_seconds")}}
            for k, v in results.items()]
    common.write_result("ml100k", out, ["model", "ndcg@10", "recall@10", "valid_ndcg@10", "train_seconds"], rows)


if __name__ == "__main__":
    main()
