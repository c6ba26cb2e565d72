"""Time-to-quality on Amazon Beauty: RecBole SASRec vs ours, one run, same data and split.

    python benchmarks/throughput_benchmark.py --beauty ../shared/data/beauty-s3rec/Beauty.txt \
        --config configs/beauty.yaml [--recbole-python PATH/bin/python]

1. RecBole SASRec (d64, 2 layers, 1 head, len 50, full CE, batch 256, lr 1e-3; DESIGN.md's
   recipe) trains on our sequences until early stopping (`--recbole-stopping-step`), logging the
   wall time after each validation.
2. Ours trains with `--config` (fresh model folder) and logs the same.
`ratio` = RecBole's wall time to reach its best validation NDCG@10 / ours to reach the same
value. Both clocks start when training starts (data loading and model building excluded) and
include the per-epoch full-ranking validation. Sequences/s: next-item training targets (one
per position after the first in each training sequence, what RecBole's CE recipe trains on
and what our every-prefix NBP trains on) per second of training, validation excluded.
Writes benchmarks/results/throughput.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from benchmarks import common, recbole_peer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beauty", default="../shared/data/beauty-s3rec/Beauty.txt")
    ap.add_argument("--work", default="benchmarks/work/throughput")
    ap.add_argument("--config", default="configs/beauty.yaml")
    ap.add_argument("--recbole-python", default="benchmarks/work/recbole-venv/bin/python")
    ap.add_argument("--recbole-stopping-step", type=int, default=3)
    ap.add_argument("--recbole-max-epochs", type=int, default=30)
    ap.add_argument("--ours-max-epochs", type=int, default=30)
    ap.add_argument("--reuse-recbole", action="store_true", help="reuse the peer's last result in --work")
    ap.add_argument("--reuse-ours", action="store_true", help="reuse our last finished model in --work")
    ap.add_argument("--note", default="", help="how the run went (added to the result's notes)")
    args = ap.parse_args()
    from ptum.config import PTUMConfig
    from ptum.data.batches import Rows
    from ptum.data.contracts import open_dataset
    from ptum.data.ingest import plan, job
    from ptum.training.pretrain import pretrain

    data = os.path.join(args.work, "data")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        job.run(plan.TokenizeOptions(inputs=[args.beauty], format="sequence-lines", output=data))
    ds = open_dataset(data)
    train_lengths = Rows.from_split(ds, "train").lengths
    targets_per_epoch = int((train_lengths - 1).clip(min=0).sum())

    rb_dir = os.path.join(args.work, "recbole")
    recbole_peer.write_inter(ds, rb_dir, "beautyptum")
    rb_cache = os.path.join(rb_dir, "sasrec_result.json")  # --reuse-recbole skips the peer's run
    if args.reuse_recbole and os.path.exists(rb_cache):
        rb = json.load(open(rb_cache))
    else:
        rb = recbole_peer.run(args.recbole_python, "SASRec", rb_dir, "beautyptum", {
            "MAX_ITEM_LIST_LENGTH": 50, "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 1,
            "train_batch_size": 256, "learning_rate": 1e-3, "epochs": args.recbole_max_epochs,
            "stopping_step": args.recbole_stopping_step}, log_prefix="recbole")
        common.write_json(rb_cache, rb)
    rb_best = rb["best_valid"]["ndcg@10"]
    rb_samples = rb.get("train_samples") or targets_per_epoch  # RecBole's CE recipe: one sample per target
    rb_time = recbole_peer.time_to(rb["curve"], rb_best)

    out_model = os.path.join(args.work, "ptum_model")
    cfg = PTUMConfig.load(args.config, [f"train.epochs={args.ours_max_epochs}"])
    if args.reuse_ours and os.path.exists(os.path.join(out_model, "metadata.json")):
        meta = json.load(open(os.path.join(out_model, "metadata.json")))
    else:
        shutil.rmtree(out_model, ignore_errors=True)
        meta = pretrain(data, out_model, cfg, log=lambda s: print(f"[ours] {s}", flush=True))
    history = json.load(open(os.path.join(out_model, "history.json")))
    curve = common.ptum_curve(out_model)
    ours_time = recbole_peer.time_to(curve, rb_best)
    ours_train_only = history[-1]["seconds"] - sum(h.get("valid_seconds", 0.0) for h in history[:-1])
    rb_epoch_train = None
    if rb["curve"]:
        rb_epoch_train = rb["fit_seconds"] / len(rb["curve"])  # per epoch incl. its validation
    rb_stop = rb.get("stopped_by") or ("early stopping" if rb["epochs"] < args.recbole_max_epochs else "epoch cap")
    out = common.envelope(" ".join(["python"] + sys.argv))
    out.update({
        "device": out["machine"]["gpu"] or f"CPU ({out['machine']['cores']} cores, {out['machine']['cpu']})",
        "target_valid_ndcg@10": rb_best,
        "recbole_seconds_to_target": rb_time,
        "ours_seconds_to_target": ours_time,
        "ratio": round(rb_time / ours_time, 2) if (rb_time and ours_time) else None,
        "goal": "ratio >= 2",
        "goal_met": bool(rb_time and ours_time and rb_time / ours_time >= 2),
        "definitions": {
            "seconds_to_target": "wall seconds from the start of training to the end of the first validation "
                                 "whose NDCG@10 (full ranking, history filtered) >= target; includes every "
                                 "validation before it",
            "sequences_per_second": "next-item training targets (positions after the first in each training "
                                    "sequence) per second; ours: training time only, RecBole: per epoch "
                                    "including its validation (its fit loop does not report them apart)",
        },
        "time_to_quality": [{"valid_ndcg@10": q, "recbole_seconds": recbole_peer.time_to(rb["curve"], q),
                             "ours_seconds": recbole_peer.time_to(curve, q)}
                            for q in sorted({0.03, 0.04, 0.045, 0.048, rb_best})],
        "targets_per_epoch": targets_per_epoch,
        "recbole": {"model": "SASRec", "best_valid_ndcg@10": rb_best, "test": rb["test"],
                    "epochs": rb["epochs"], "stopped_by": rb_stop, "fit_seconds": rb["fit_seconds"],
                    "train_samples": rb_samples,
                    "sequences_per_second": round(rb_samples / rb_epoch_train, 1) if rb_epoch_train else None,
                    "curve": rb["curve"]},
        "ours": {"config_file": args.config, "best_valid_ndcg@10": meta["valid"]["ndcg@10"],
                 "epochs": meta["epochs_run"], "train_seconds": meta["train_seconds"],
                 "sequences_per_second": round(targets_per_epoch * len(history) / ours_train_only, 1),
                 "users_per_second": round(len(train_lengths) * len(history) / ours_train_only, 1),
                 "curve": curve},
    })
    rows = [{"side": "RecBole SASRec", "best valid ndcg@10": f"{rb_best:.4f}",
             "seconds to target": rb_time, "epochs": rb["epochs"],
             "targets/s": out["recbole"]["sequences_per_second"]},
            {"side": "ours (" + args.config + ")", "best valid ndcg@10": f"{meta['valid']['ndcg@10']:.4f}",
             "seconds to target": ours_time, "epochs": meta["epochs_run"],
             "targets/s": out["ours"]["sequences_per_second"]}]
    out["notes"] = (f"ratio {out['ratio']} (RecBole time to its best valid NDCG@10 / ours to the same value); "
                    f"RecBole stopped by: {rb_stop}" + (f"; {args.note}" if args.note else ""))
    common.write_result("throughput", out, ["side", "best valid ndcg@10", "seconds to target", "epochs", "targets/s"],
                        rows)
    common.plot_curves("throughput", {"RecBole SASRec": rb["curve"], "ours": curve}, "seconds",
                       "wall seconds since training start", "Beauty: time to quality, " + out["device"], target=rb_best)


if __name__ == "__main__":
    main()
