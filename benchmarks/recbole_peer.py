"""RecBole peers (SASRec, BERT4Rec) run on our exact sequences and split, in their own venv.

RecBole 1.2.1 needs its own venv (Python 3.11, `pip install torch==2.13.0 recbole==1.2.1 "numpy<2"
"pandas<2.3" "scipy<1.14" "setuptools<70"`; see DESIGN.md). It gets our sequences as an atomic
.inter file with ordinal timestamps, so its leave-one-out split (order TO, LS valid_and_test)
equals ours. The runner records, after every validation, the wall time since training began
and the validation NDCG@10 (RecBole's Trainer.fit callback), so time-to-quality can be read
off the same curve as ours.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Dict, List, Optional

RUNNER = r'''
import json, os, sys, time
import numpy as np
np.float = float  # RecBole's NDCG code uses the removed alias on some paths
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_logger, init_seed

model_name, cfg = sys.argv[1], json.loads(sys.argv[2])
if os.environ.get("RECBOLE_THREADS"):
    torch.set_num_threads(int(os.environ["RECBOLE_THREADS"]))
config = Config(model=model_name, config_dict=cfg)
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
curve = []
t0 = time.time()
def on_valid(epoch_idx, score):
    curve.append({"epoch": epoch_idx + 1, "seconds": round(time.time() - t0, 2), "valid_ndcg@10": float(score),
                  "loss": float(trainer.train_loss_dict.get(epoch_idx, float("nan")))})
    print("EPOCH " + json.dumps(curve[-1]), flush=True)
best_score, best = trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=on_valid)
fit_seconds = time.time() - t0
test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
out = {"fit_seconds": round(fit_seconds, 1), "best_valid": {k: float(v) for k, v in best.items()},
       "test": {k: float(v) for k, v in test.items()}, "curve": curve,
       "train_samples": len(train_data.dataset), "epochs": len(curve)}
print("RESULT " + json.dumps(out), flush=True)
'''

BASE = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "loss_type": "CE", "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Recall", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "seed": 0,
        "reproducibility": True, "device": "cpu", "use_gpu": False, "show_progress": False}


def write_inter(ds, folder: str, name: str) -> str:
    """The test split's full sequences (train + valid + test items) as RecBole's atomic file."""
    d = os.path.join(folder, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{name}.inter")
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("user_id:token\titem_id:token\ttimestamp:float\n")
            for r in ds.read_split("test").to_pylist():
                for pos, item in enumerate(r["item_ids"]):
                    f.write(f"{r['user_id']}\t{item}\t{pos}\n")
        os.replace(tmp, path)
    return path


def run(python: str, model: str, folder: str, name: str, settings: Dict[str, object],
        log_prefix: Optional[str] = None) -> dict:
    """Train one RecBole model to early stopping; returns fit_seconds, best_valid, test, curve."""
    folder, python = os.path.abspath(folder), os.path.abspath(python)
    cfg = dict(BASE, data_path=folder, dataset=name, checkpoint_dir=os.path.join(folder, "saved"), **settings)
    log_path = os.path.join(folder, f"{model}.log")
    result = None
    with open(log_path, "w") as err:
        proc = subprocess.Popen([python, "-c", RUNNER, model, json.dumps(cfg)], stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=folder)
        for line in proc.stdout:
            if line.startswith("EPOCH ") and log_prefix:
                print(f"[{log_prefix}] {line[6:].strip()}", flush=True)
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
    if proc.wait() != 0 or result is None:
        with open(log_path) as f:
            raise RuntimeError(f"RecBole {model} failed (log {log_path}):\n{f.read()[-3000:]}")
    return result


def time_to(curve: List[dict], target: float) -> Optional[float]:
    """Seconds (after validation) at which validation NDCG@10 first reaches `target`."""
    for e in curve:
        v = e.get("valid_ndcg@10")
        if v is not None and v >= target:
            return e["seconds"]
    return None
