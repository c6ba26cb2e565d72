"""The public API: everything a notebook or a script needs, re-exported as `ptum.<name>`.
README, "Python API", walks through every call on logs; here, opening what the CLI wrote:

    import ptum

    data = ptum.load_dataset("data/")                  # a dataset folder from `ptum tokenize`
    model = ptum.load_model("model/")                  # a model folder from `ptum pretrain`
    print(model)                                       # ptum.Model('model/', best epoch ..., valid ...)
    metrics = ptum.evaluate(model, data, split="test")
    users, vectors = ptum.embed_users(model, data)     # the user embeddings, one row per user
    config = ptum.load_config("model/config.json")     # the config it was trained with

Everything runs in this process (tokenization with pyarrow, the same transform the Beam job
distributes; training with Keras on the backend KERAS_BACKEND names). `import ptum` stays
light: Keras and its backend are imported by the first call that trains or loads a model.

Global state. `pretrain` and `finetune` seed Keras (`keras.utils.set_random_seed`: Python's
`random`, NumPy's global generator and the backend's seed), and `pretrain` may set the mixed
precision policy (`train.mixed_precision`) and, with several JAX devices, a Keras distribution.
When any call that builds or loads a model returns, the precision policy, the distribution,
Python's and NumPy's random states are put back as they were (loading a Keras model draws
seeds from Python's generator). The backend's own global seed (`tf.random.set_seed`) cannot
be read back and stays set; op determinism (`train.deterministic`, TensorFlow) stays enabled.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ptum.config import PTUMConfig
from ptum.data import contracts

__all__ = ["Model", "tokenize", "load_dataset", "load_config", "pretrain", "load_model", "evaluate",
           "embed_users", "finetune", "export_model"]


@dataclass
class Model:
    """A finished model folder, loaded: the Keras encoder, its metadata and config."""

    path: str
    encoder: Any
    metadata: Dict[str, Any]
    config: PTUMConfig

    def __repr__(self) -> str:
        valid = ", ".join(f"{k} {v:.4f}" for k, v in self.metadata.get("valid", {}).items())
        return f"ptum.Model({self.path!r}, best epoch {self.metadata.get('best_epoch')}, valid {valid})"


def _table_like(x) -> bool:
    return hasattr(x, "to_batches") or type(x).__name__ == "DataFrame"


def _arrow(x):
    import pyarrow as pa

    return x if isinstance(x, pa.Table) else pa.Table.from_pandas(x, preserve_index=False)


@contextlib.contextmanager
def _as_file(x, name: str):
    """A path for `x`: a path as is; an in-memory table written to a temporary Parquet file."""
    if x is None or isinstance(x, (str, os.PathLike)):
        yield None if x is None else os.fspath(x)
        return
    if not _table_like(x):
        raise TypeError(f"{name}: a path, a pyarrow.Table or a pandas.DataFrame, got {type(x).__name__}")
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="ptum-") as d:
        path = os.path.join(d, f"{name}.parquet")
        pq.write_table(_arrow(x), path)
        yield path


def load_dataset(path) -> contracts.SequenceDataset:
    """A tokenized sequence dataset (its manifest checked; splits read on demand)."""
    return contracts.open_dataset(os.fspath(path))


def _data_path(data) -> str:
    return data.root if isinstance(data, contracts.SequenceDataset) else os.fspath(data)


def tokenize(events, output, *, format: Optional[str] = None, items=None, split: str = "leave-one-out",
             **options) -> contracts.SequenceDataset:
    """Raw behavior logs -> a sequence dataset in `output` (the `ptum tokenize` transform, in this
    process with pyarrow).

    `events`: a file, folder or glob (or a list of them), or an in-memory pyarrow.Table /
    pandas.DataFrame with the event columns (an in-memory table is written to a temporary Parquet
    file first; the manifest's `inputs` name that file). `format`: csv | tsv | jsonl | parquet |
    movielens | sequence-lines (default: parquet for a table, else from the file extension).
    `items`: the item catalog (path or table). `options`: any other `TokenizeOptions` field
    (`window`, `min_item_count`, `max_history`, `time_unit`, `vocab_from`, ...) and, for the
    columns, `user_column`, `item_column`, `time_column`, `behavior_column`, `value_column`."""
    from ptum.data.ingest import plan, reference
    from ptum.data.ingest.formats import Columns

    if not (_table_like(events) or isinstance(events, (str, os.PathLike, list, tuple))):
        raise TypeError(f"events: a path, a list of paths, a pyarrow.Table or a pandas.DataFrame, "
                        f"got {type(events).__name__}")
    col_keys = {"user_column": "user", "item_column": "item", "time_column": "time",
                "behavior_column": "behavior", "value_column": "value"}
    columns = {col_keys[k]: options.pop(k) for k in list(options) if k in col_keys}
    with _as_file(events if _table_like(events) else None, "events") as table_path, \
            _as_file(items, "items") as items_path:
        if table_path is not None:
            inputs, fmt = [table_path], format or "parquet"
        else:
            inputs = [os.fspath(p) for p in ([events] if isinstance(events, (str, os.PathLike)) else events)]
            fmt = format or _format_from_name(inputs[0])
        opts = plan.TokenizeOptions(inputs=inputs, format=fmt, output=os.fspath(output),
                                    columns=Columns(**columns), items_catalog=items_path, split=split, **options)
        reference.run(opts)
    return load_dataset(output)


def _format_from_name(path: str) -> str:
    name = os.path.basename(path).lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        name = name[:-len(suffix)] if name.endswith(suffix) else name
    for ext, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl"),
                     (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    raise ValueError(f"{path}: cannot tell the format from the name; pass format=csv|tsv|jsonl|parquet|"
                     f"movielens|sequence-lines")


def load_config(config=None, overrides: Sequence[str] = ()) -> PTUMConfig:
    """A validated PTUMConfig from a preset name (`ptum.config.presets()`), a YAML path, a dict
    of sections, or a PTUMConfig; `overrides` as the CLI's `--set section.key=value`."""
    from ptum.config import apply_override, preset_path, read_yaml

    if isinstance(config, PTUMConfig):
        d = config.to_dict()
    elif isinstance(config, dict):
        d = {k: dict(v) for k, v in config.items()}
    elif config is None:
        d = {}
    else:
        d = read_yaml(preset_path(os.fspath(config)))
    for item in overrides:
        apply_override(d, item)
    return PTUMConfig.from_dict(d)


@contextlib.contextmanager
def _keras_state_restored():
    """Put back what training changes globally (see the module docstring)."""
    import random

    import keras

    py, npy = random.getstate(), np.random.get_state()
    policy = keras.mixed_precision.global_policy()
    distribution = keras.distribution.distribution()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        keras.mixed_precision.set_global_policy(policy)
        keras.distribution.set_distribution(distribution)


def pretrain(config, data, output=None, *, overrides: Sequence[str] = (), resume: bool = True,
             warm_start: Optional[str] = None, log: Callable[[str], None] = print) -> Model:
    """Pre-train a PTUM model on a dataset's train split (validation on `valid`); returns the
    loaded best model. `output`: the model folder (default: a new temporary folder); an
    unfinished run there is resumed unless `resume=False`."""
    from ptum.training.pretrain import pretrain as _pretrain

    cfg = load_config(config, overrides)
    output = os.fspath(output) if output is not None else tempfile.mkdtemp(prefix="ptum-model-")
    with _keras_state_restored():
        _pretrain(_data_path(data), output, cfg, log=log, resume=resume, warm_start=warm_start)
        return load_model(output)


def load_model(path) -> Model:
    """A finished model folder (from `pretrain` or `ptum pretrain`)."""
    from ptum.model.saving import load_model_dir

    with _keras_state_restored():   # building layers draws seeds from Python's generator
        encoder, metadata, cfg = load_model_dir(os.fspath(path))
    return Model(os.fspath(path), encoder, metadata, cfg)


def _model_path(model) -> str:
    return model.path if isinstance(model, Model) else os.fspath(model)


def evaluate(model, data, split: str = "test") -> Dict[str, Any]:
    """Next-item metrics (full ranking, history items filtered) of `model` on a split."""
    from ptum.evaluation.ranking import evaluate_model

    with _keras_state_restored():
        return evaluate_model(_model_path(model), _data_path(data), split)


def embed_users(model, data, split: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(user ids, user embeddings [users, d]) of each user's newest history in `data` (what
    `ptum export-embeddings` writes), or of the rows of one split."""
    from ptum.data.batches import Rows
    from ptum.evaluation.embeddings import embed_users as _embed, model_embedder, newest_rows

    ds = data if isinstance(data, contracts.SequenceDataset) else load_dataset(data)
    rows = newest_rows(ds) if split is None else Rows.from_split(ds, split)
    with _keras_state_restored():
        embed, _, _ = model_embedder(_model_path(model))
    users = np.asarray(rows.user_ids, dtype=object)
    vectors = _embed(embed, rows, users)
    return users, vectors if vectors is not None else np.zeros((0, 0), np.float32)


def finetune(model, data, labels, output, *, task: str = "classify", label_column: Optional[str] = None,
             config: Union[None, dict, Any] = None, from_scratch: bool = False,
             log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Fine-tune a pre-trained model for a downstream task; writes `output` and returns its
    metadata (held-out metrics under "valid"). `labels`: CSV/Parquet path or a table with
    user_id + the label column (task "classify"), or impressions (task "ctr"). `config`: a
    FinetuneConfig or a dict of its fields."""
    from ptum.training.finetune import FinetuneConfig, run

    if config is None or isinstance(config, dict):
        config = FinetuneConfig(**{**(config or {}), "task": task})
    with _as_file(labels, "labels") as labels_path, _keras_state_restored():
        return run(_model_path(model), _data_path(data), labels_path, os.fspath(output), config,
                   label_column=label_column, from_scratch=from_scratch, log=log)


def export_model(model, output, version: Optional[int] = None) -> str:
    """A TF Serving SavedModel version folder `<output>/<version>/` (TensorFlow needed); its path."""
    from ptum.serving.saved_model import export_saved_model

    with _keras_state_restored():   # the export loads and traces the model
        return export_saved_model(_model_path(model), os.fspath(output), version=version)
