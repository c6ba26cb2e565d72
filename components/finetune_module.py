"""TFX Trainer `run_fn` for fine-tuning the pre-trained PTUM model on one downstream task.

Used as Trainer(run_fn="components.finetune_module.run_fn", base_model=<pre-training
Trainer's model>, custom_config={"task": {...}}), one Trainer per configured task. Each user's
newest history is read from the Examples (eval rows, then train rows of users without one)
through TFX's data accessor; labels come from the task's table (user_id + label column, or
impressions for ctr). Writes Format-Serving/finetuned/ (model.keras, metrics.json,
metadata.json last).
"""
from __future__ import annotations

import json
import os


def run_fn(fn_args) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from components.trainer_module import _rows_from_examples, dataset_path
    from ptum.data import contracts
    from ptum.training.finetune import FinetuneConfig, run_rows

    task = dict(fn_args.custom_config["task"])
    if not fn_args.base_model:
        raise ValueError("the fine-tune Trainer needs base_model (the pre-training Trainer's model)")
    ds = contracts.open_dataset(dataset_path(fn_args))
    rows = _rows_from_examples(fn_args, fn_args.eval_files).newest_with(_rows_from_examples(fn_args, fn_args.train_files))
    cfg = FinetuneConfig(**{**task.get("config", {}), "task": task.get("task", "classify")})
    out = run_rows(os.path.join(fn_args.base_model, "ptum_model"), ds, rows, task["labels"],
                   os.path.join(fn_args.serving_model_dir, "finetuned"), cfg,
                   label_column=task.get("label_column"), log=print)
    print(f"fine-tune {task.get('name')}: {json.dumps(out['valid'])}", flush=True)
