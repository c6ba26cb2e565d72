"""TFX Trainer `run_fn` for PTUM pre-training (used as Trainer(run_fn=...)).

Reads the Examples through TFX's data accessor (TFXIO, the schema from schemas/),
trains with ptum.training.pretrain.pretrain_rows, writes the ptum model folder and its SavedModel
under the serving model dir: Format-Serving/ptum_model/ and Format-Serving/saved_model/;
checkpoints and TensorBoard logs go to the ModelRun artifact (model_run_dir). The dataset's
manifest and vocabulary come from the path the Trainer's executor passes in
custom_config["dataset"] (components/dataset_trainer.py).
"""
from __future__ import annotations

import os
import shutil

import numpy as np


def _rows_from_examples(fn_args, files):
    from tfx.utils import io_utils
    from tfx_bsl.public import tfxio
    from tensorflow_metadata.proto.v0 import schema_pb2

    from ptum.data.batches import Rows

    schema = io_utils.parse_pbtxt_file(fn_args.schema_path, schema_pb2.Schema())
    dataset = fn_args.data_accessor.tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=2048, num_epochs=1, shuffle=False), schema)
    users, lens, items, behs, tss = [], [], [], [], []
    for batch in dataset:
        ids = batch["item_ids"]
        n = np.bincount(ids.indices[:, 0].numpy(), minlength=int(ids.dense_shape[0]))
        lens.append(n)
        items.append(ids.values.numpy())
        behs.append(batch["behavior_ids"].values.numpy())
        tss.append(batch["timestamps"].values.numpy())
        u = batch["user_id"]
        u = u.values if hasattr(u, "values") else u
        users.extend(x.decode("utf-8") for x in np.asarray(u).reshape(-1))
    lens = np.concatenate(lens) if lens else np.zeros(0, np.int64)
    return Rows(user_ids=np.asarray(users, dtype=object),
                offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                items=np.concatenate(items).astype(np.int32) if items else np.zeros(0, np.int32),
                behaviors=np.concatenate(behs).astype(np.int32) if behs else np.zeros(0, np.int32),
                timestamps=np.concatenate(tss).astype(np.int64) if tss else np.zeros(0, np.int64))


def dataset_path(fn_args) -> str:
    """The sequence dataset behind the Examples, as components.dataset_trainer passes it."""
    path = (fn_args.custom_config or {}).get("dataset")
    if not path:
        raise ValueError("run_fn needs custom_config['dataset']: build the Trainer with "
                         "custom_executor_spec=components.dataset_trainer.DATASET_TRAINER")
    return path


def run_fn(fn_args) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from ptum.config import PTUMConfig
    from ptum.data import contracts
    from ptum.training.pretrain import pretrain_rows

    cfg = PTUMConfig.from_dict(fn_args.custom_config["ptum_config"])
    ds = contracts.open_dataset(dataset_path(fn_args))
    train = _rows_from_examples(fn_args, fn_args.train_files)
    valid = _rows_from_examples(fn_args, fn_args.eval_files)
    model_dir = os.path.join(fn_args.serving_model_dir, "ptum_model")
    base = os.path.join(fn_args.base_model, "ptum_model") if fn_args.base_model else None
    # As TFX's templates do: checkpoints and TensorBoard logs in model_run_dir, the model in
    # serving_model_dir.
    pretrain_rows(ds, train, valid, model_dir, cfg, log=print, warm_start=base, run_dir=fn_args.model_run_dir)
    export_beside(model_dir, fn_args.serving_model_dir, fn_args.model_run_dir)


def export_beside(model_dir: str, serving_model_dir: str, run_dir: str) -> None:
    """The model folder's SavedModel as <serving_model_dir>/saved_model (exported under
    `run_dir` first), unversioned: the pusher gives it its version."""
    from ptum.serving.saved_model import export_saved_model, stamp_version

    tmp_base = os.path.join(run_dir, "export")
    shutil.rmtree(tmp_base, ignore_errors=True)
    version_dir = export_saved_model(model_dir, tmp_base, version=1)
    dest = os.path.join(serving_model_dir, "saved_model")
    shutil.move(version_dir, dest)
    stamp_version(dest, None)
