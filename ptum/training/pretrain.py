"""Pre-training: a sequence dataset -> a PTUM model folder, resumable after a kill.

One run goes through these stages, each once and in this order (docs/ARCHITECTURE.md):

  pretrain        open the dataset; its train and valid rows (ptum.data)
  pretrain_rows   the cluster's chief holds the output folder's lock
  _prepare        the config completed from the dataset and checked (memory included), the
                  vocabularies snapshotted, a checkpoint of another vocabulary refused
  _build          seed, precision, strategy; the pre-trainer resumed from its checkpoint,
                  warm-started or built (ptum.model) and compiled
  _callbacks      validation (ptum.evaluation), best weights, history, checkpoints, limits
  _fit            Keras fit over the length-bucketed batches, the interrupted epoch first
  _commit         the best weights into a stage that replaces the model folder (_finish writes
                  encoder, vocabularies, config, history, metadata last)

The model folder's layout is described in `ptum.model.saving`, which also loads it.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ptum import fs
from ptum.config import PTUMConfig
from ptum.data import contracts
from ptum.model.saving import ENCODER_FILE, GENERATIVE_MODEL, METADATA, ModelError, atomic_save_keras, file_digests, load_model_dir
from ptum.training import runtime
from ptum.training.runtime import TrainingError

__all__ = ["TrainingError", "pretrain", "pretrain_rows", "fill_from_dataset", "selection_metric", "train_window"]


def pretrain(data_dir: str, output: str, cfg: PTUMConfig, log: Callable[[str], None] = print,
             resume: bool = True, warm_start: Optional[str] = None) -> dict:
    """Train the PTUM model; returns the metadata written to `output/metadata.json`."""
    from ptum.data.batches import Rows

    ds = contracts.open_dataset(data_dir)
    for split in ("train", "valid"):
        if split not in ds.splits:
            raise TrainingError(f"{data_dir}: pre-training needs a {split!r} split "
                                f"(this dataset has {list(ds.splits)}; tokenize with --split leave-one-out)")
    return pretrain_rows(ds, Rows.from_split(ds, "train"), Rows.from_split(ds, "valid"), output, cfg,
                         log=log, resume=resume, warm_start=warm_start)


def pretrain_rows(ds: contracts.SequenceDataset, train_rows, valid_rows, output: str, cfg: PTUMConfig,
                  log: Callable[[str], None] = print, resume: bool = True,
                  warm_start: Optional[str] = None, run_dir: Optional[str] = None) -> dict:
    """Train on given rows (the TFX Trainer reads them through its data accessor); `ds`
    supplies the manifest and vocabulary. `warm_start`: a finished model directory whose
    encoder weights initialise this model when vocabulary and model config match. `run_dir`:
    where checkpoints and TensorBoard logs go (default: `output`; the TFX Trainer passes its
    model_run_dir, so the model artifact holds only the model). In a multi-worker cluster only
    the chief writes `output`; the other workers write to a temporary folder of their own."""
    if not runtime.is_chief():
        import tempfile

        output = tempfile.mkdtemp(prefix="ptum-worker-")
        run_dir = None
        log(f"not the chief of the TF_CONFIG cluster: this worker writes to {output}")
    contracts.check_output_kind(output, "model", TrainingError)
    with contracts.output_lock(output, "ptum pretrain", TrainingError):
        run = _prepare(ds, train_rows, output, cfg, run_dir or output, resume, log)
        pretrainer, state = _build(run, warm_start, log)
        # The rows trained on (the TFX Trainer's Examples, or a subset such as cold start's).
        state["rows"] = {"train": len(train_rows), "train_behaviors": int(train_rows.lengths.sum()),
                         "valid": len(valid_rows)}
        data = _batches(run, pretrainer, train_rows, state)
        callbacks = _callbacks(run, pretrainer, state, valid_rows, len(data), log)
        _fit(run, pretrainer, state, train_rows, data, callbacks, log)
        return _commit(run, pretrainer, state, log)


@dataclass
class _Run:
    """What the stages of one run share: the completed config, the dataset, the vocabularies
    as read at the start, and where checkpoints go."""
    ds: contracts.SequenceDataset
    cfg: PTUMConfig
    title_words: Optional[np.ndarray]
    vocab_snapshot: Dict[str, bytes]
    output: str
    run_dir: str
    resume: bool
    item_codes: Optional[np.ndarray] = None     # model.architecture generative: the items' code tuples
    codes_info: Optional[dict] = None
    targets_per_row: float = 0.0                # the train rows' mean NBP targets (objective.loss_average)
    item_idf: Optional[np.ndarray] = None       # the items' idf over the train rows (objective.bag_target_weight)

    @property
    def generative(self) -> bool:
        return self.cfg.model.architecture == "generative"

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.run_dir, "checkpoints")

    @property
    def state_path(self) -> str:
        return os.path.join(self.ckpt_dir, "state.json")

    @property
    def latest(self) -> str:
        return os.path.join(self.ckpt_dir, "latest.keras")

    @property
    def best_path(self) -> str:
        return os.path.join(self.ckpt_dir, "best.weights.h5")

    @property
    def has_checkpoint(self) -> bool:
        return self.resume and os.path.exists(self.state_path) and os.path.exists(self.latest)

    @property
    def time_buckets(self) -> int:
        return self.cfg.model.time_buckets if self.cfg.model.use_time else 0


def _prepare(ds, train_rows, output: str, cfg: PTUMConfig, run_dir: str, resume: bool, log=print) -> _Run:
    """Everything refused before the output is touched: no trainable sequence, a bad or
    too large config, a checkpoint trained on another vocabulary."""
    if (train_rows.lengths >= 2).sum() == 0:
        raise TrainingError(f"{ds.root}: the train split has no sequence with 2 or more behaviors")
    cfg, title_words = fill_from_dataset(cfg, ds)
    cfg.validate()
    runtime.check_memory(cfg)
    # The vocabularies the model will carry, read (and verified) now: a dataset folder
    # rewritten during training cannot hand the model other vocabularies than it trained on.
    run = _Run(ds, cfg, title_words, ds.vocab_files(), output, run_dir, resume)
    from ptum.data.batches import item_idf, mean_targets_per_row
    run.targets_per_row = mean_targets_per_row(train_rows.lengths, train_window(cfg))
    if cfg.objective.bag_target_weight == "idf":       # validate() refused it without objective.bag
        run.item_idf = item_idf(train_rows, cfg.model.num_items)
    if run.generative:
        from ptum.training.generative import item_codes

        run.item_codes, run.codes_info = item_codes(cfg, ds)
        cfg.model.num_items = len(run.item_codes)      # the vocabulary, then catalog items (catalog_items)
        info = run.codes_info
        if info.get("catalog_items_coded", 0) < info.get("catalog_items", 0):
            log(f"warning: {info['catalog_items'] - info['catalog_items_coded']:,} of {info['catalog_items']:,} "
                f"catalog items without events have no code in {cfg.generative.semantic_ids} (made before they "
                "were in the catalog, or no content): the model cannot return them; re-run ptum semantic-ids")
    if run.has_checkpoint:
        with open(run.state_path) as f:
            saved_vocab = json.load(f).get("vocab_hash")
        if saved_vocab != ds.vocab_hash:
            raise TrainingError(f"{output}: checkpoint was trained on vocabulary {saved_vocab}, "
                                f"dataset has {ds.vocab_hash}; use a new --output or --no-resume")
    os.makedirs(run.ckpt_dir, exist_ok=True)
    return run


def _build(run: _Run, warm_start: Optional[str], log):
    """(the compiled pre-trainer, the run state): resumed from the checkpoint when its config is
    this run's, else warm-started from `warm_start` or built new."""
    import keras

    from ptum.model.encoder import build_encoder_for
    from ptum.model.generative import build_generative   # also registers the class a checkpoint names
    from ptum.model.objectives import build_pretrainer

    cfg, t = run.cfg, run.cfg.train
    state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "wait": 0, "history": [], "train_seconds": 0.0,
             "vocab_hash": run.ds.vocab_hash, "config": cfg.to_dict()}
    keras.utils.set_random_seed(t.seed)
    if t.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    runtime.set_precision(t.mixed_precision)
    saved = None
    with runtime.distribution_scope():
        if run.has_checkpoint:
            with open(run.state_path) as f:
                saved = json.load(f)
            saved["config"] = _with_defaults(saved.get("config"))
            if _resume_key(saved.get("config")) != _resume_key(cfg.to_dict()):
                log("checkpoint config differs from this run's: starting over")
            else:
                state = saved
                if saved["config"] != cfg.to_dict():   # only how long to train: go on from the checkpoint
                    log(f"checkpoint config differs only in {', '.join(_budget_changes(saved['config'], cfg))}: "
                        "training goes on from the checkpoint")
                    state["config"] = cfg.to_dict()
                pretrainer = keras.saving.load_model(run.latest, compile=True)
                for var, value in zip(_rng_states(pretrainer), state.get("rng_states", [])):
                    var.assign(np.asarray(value, dtype=var.dtype))
                log(f"resuming from {run.latest} after epoch {state['epoch']}")
        if state is not saved and run.generative:
            if warm_start:
                state["warm_start"] = {"from": warm_start, "used": False,
                                       "reason": "warm start is for the PTUM encoder, not the generative model"}
                log(f"no warm start from {warm_start}: {state['warm_start']['reason']}")
            pretrainer = build_generative(cfg, run.item_codes, run.targets_per_row)
        elif state is not saved:
            encoder = None
            if warm_start:
                encoder, state["warm_start"] = _warm_start_encoder(warm_start, run.ds, cfg, run.title_words, log)
            if encoder is None:
                encoder = build_encoder_for(cfg, run.title_words)
            pretrainer = build_pretrainer(cfg, encoder, run.targets_per_row, run.item_idf)
        if state is not saved:
            optimizer = keras.optimizers.AdamW(learning_rate=t.learning_rate, weight_decay=t.weight_decay,
                                               clipnorm=t.clipnorm or None, use_ema=t.ema_momentum > 0,
                                               ema_momentum=t.ema_momentum)
            pretrainer.compile(optimizer=optimizer, jit_compile=runtime.jit_setting(cfg),
                               steps_per_execution=t.steps_per_execution)
    if t.ema_momentum:
        from ptum.training.callbacks import keep_own_weights_after_fit
        keep_own_weights_after_fit(pretrainer.optimizer)
    state["select_metric"] = selection_metric(cfg, run.ds)
    return pretrainer, state


# How long to train, not what: a checkpoint resumes when only these differ (more epochs after a
# finished run, a longer time limit, another patience).
TRAINING_BUDGET = ("epochs", "max_train_seconds", "patience")


def _with_defaults(config: Optional[dict]) -> Optional[dict]:
    """A checkpoint's config with the keys a later version added at their defaults (so upgrading
    ptum does not restart a run); as it is when it no longer validates (then it differs)."""
    try:
        return PTUMConfig.from_dict(config).to_dict() if config else config
    except Exception:   # noqa: BLE001 - a config this version cannot read is simply not this run's
        return config


def _resume_key(config: Optional[dict]) -> Optional[dict]:
    if not config:
        return config
    return {**config, "train": {k: v for k, v in config.get("train", {}).items() if k not in TRAINING_BUDGET}}


def _budget_changes(old: dict, cfg: PTUMConfig) -> list:
    new = cfg.to_dict()["train"]
    return [f"train.{k} {old['train'].get(k)} -> {new[k]}" for k in TRAINING_BUDGET if old["train"].get(k) != new[k]]


def _network(run: _Run, pretrainer):
    """What the model folder keeps: the user encoder, or the whole generative model."""
    return pretrainer if run.generative else pretrainer.encoder


def _generative_validation(run: _Run, model, valid_rows) -> Callable[[int], dict]:
    from ptum.evaluation.generative import generative_metrics

    t = run.cfg.train

    def metrics(epoch: int) -> dict:
        m = generative_metrics(model, valid_rows, run.cfg.model.max_len, t.length_buckets,
                               run.cfg.generative.beam_size, t.eval_batch_size, ks=(10,),
                               catalog_from=run.ds.num_item_tokens if run.cfg.generative.catalog_items else None,
                               unfiltered=False)
        return {"ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"]}
    return metrics


def _validation(run: _Run, encoder, valid_rows, select: str) -> Callable[[int], dict]:
    """Next-item metrics on the valid rows, and the window retrieval of a window split (its
    valid rows' train part is the input, their last W the window)."""
    if run.generative:
        return _generative_validation(run, encoder, valid_rows)
    from ptum.evaluation.embeddings import embed_prefixes, window_retrieval
    from ptum.evaluation.ranking import NonFiniteScores, embedding_space_numpy, rank_metrics
    from ptum.model.encoder import UserEmbedder

    t = run.cfg.train
    embedder = UserEmbedder(encoder, name="user_embedder")

    def embed(rows, idx, ends):
        return embed_prefixes(encoder.user_embedding, rows, idx, ends, run.cfg.model.max_len, t.length_buckets,
                              run.time_buckets, t.eval_batch_size)

    def metrics(epoch: int) -> dict:
        try:
            m = rank_metrics(embedder, valid_rows, run.cfg.model.max_len, t.length_buckets, run.time_buckets,
                             t.eval_batch_size, ks=(10,))
            out = {"ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"]}
            if select == "window_recall@10":
                table, bias = embedding_space_numpy(encoder)
                w = window_retrieval(embed, valid_rows, table, dataset_window(run.ds), bias=bias)
                out.update({"window_recall@10": w["window_recall@10"], "window_ndcg@10": w["window_ndcg@10"]})
        except NonFiniteScores as e:
            raise TrainingError(f"epoch {epoch + 1}: {e}; no model was written") from e
        return out
    return metrics


def _callbacks(run: _Run, pretrainer, state: dict, valid_rows, batches: int, log) -> list:
    """In this order at each epoch's end: the loss must be finite; the clock stops before
    validation; (train.ema_momentum: the averaged weights are swapped in) the best weights and
    patience see the validation, (the model's own weights back) then the learning rate's
    decay (train.lr_decay_patience, or lr_restarts from the best weights); the history records
    it all; the checkpoint saves the state the others left; then the time limit."""
    import keras

    from ptum.training.callbacks import (Checkpoint, DecayOnPlateau, EpochRecord, KeepBest, NaNGuard, SwapAverage,
                                         TimeLimit, TrainClock, ValidationMetrics, epoch_line)

    t = run.cfg.train
    select = state["select_metric"]
    skip = int(state.get("step", 0))  # batches of state["epoch"] already done (step checkpoint)

    def save_checkpoint():
        atomic_save_keras(pretrainer, run.latest)
        state["rng_states"] = [np.asarray(keras.ops.convert_to_numpy(v.value)).tolist()
                               for v in _rng_states(pretrainer)]
        tmp = run.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, run.state_path)

    def line(epoch, logs):
        log(epoch_line(epoch + 1, t.epochs, logs["seconds"], loss=float(logs["loss"]),
                       **{"valid_ndcg@10": logs.get("val_ndcg@10"),
                          "valid_window_recall@10": logs.get("val_window_recall@10")}))

    clock = TrainClock(state)
    average = [SwapAverage()] if t.ema_momentum else []
    limit = TimeLimit(t.max_train_seconds)

    def last_epoch(epoch: int, logs: dict) -> bool:    # validated whatever train.eval_every says
        return epoch + 1 >= t.epochs or limit.passed(logs)

    callbacks = [NaNGuard(TrainingError, hint=": lower the learning rate or check the data; no model was written"),
                 clock, *average, ValidationMetrics(_validation(run, _network(run, pretrainer), valid_rows, select),
                                          every=t.eval_every, timed=True, final=last_epoch),
                 KeepBest("val_" + select, state, t.patience, keep=lambda _: pretrainer.save_weights(run.best_path)),
                 *average,
                 *([DecayOnPlateau("val_" + select, state, t.patience if t.lr_restarts else t.lr_decay_patience,
                                   t.lr_decay_factor, log, restarts=t.lr_restarts,
                                   reload=lambda: pretrainer.load_weights(run.best_path))]
                   if t.lr_decay_patience or t.lr_restarts else []),
                 EpochRecord(state, line),
                 Checkpoint(save_checkpoint, state, clock, t.checkpoint_every_steps, batches + skip, offset=skip),
                 limit]
    if runtime.tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run.run_dir, "tensorboard"),
                                                     write_graph=False, update_freq="epoch"))
    return callbacks


def _batches(run: _Run, pretrainer, train_rows, state: dict, resumed_epoch: bool = True):
    """The epoch's length-bucketed batches (ptum.data.batches), without the batches a step
    checkpoint already trained on. JAX's DataParallel shards each batch evenly over the
    devices: pad to a multiple of them (tf.distribute splits uneven batches itself)."""
    import keras

    from ptum.data.batches import TrainBatches

    t = run.cfg.train
    multiple = runtime.distribution_info(pretrainer)["replicas"] if keras.backend.backend() == "jax" else 1
    skip = int(state.get("step", 0)) if resumed_epoch else 0
    return TrainBatches(train_rows, t.batch_size, train_window(run.cfg), t.length_buckets, t.seed, run.time_buckets,
                        epoch=state["epoch"], multiple=multiple, skip=skip)


def _fit(run: _Run, pretrainer, state: dict, train_rows, data, callbacks: list, log) -> None:
    """Keras fit until the epochs, the patience or the time limit run out; a run resumed in
    the middle of an epoch first finishes that epoch."""
    import keras

    t = run.cfg.train

    def fit(batches, epochs):
        if keras.backend.backend() == "tensorflow":
            from ptum.data.tf_input import train_dataset
            fit_data = train_dataset(batches)
            if pretrainer.distribute_strategy.num_replicas_in_sync > 1:
                runtime.build_on(pretrainer, batches)
        else:
            fit_data = batches
        with warnings.catch_warnings():
            if run.generative:    # the first decoding step attends over one token, by design
                warnings.filterwarnings("ignore", message="You are using a softmax over axis")
            pretrainer.fit(fit_data, epochs=epochs, initial_epoch=state["epoch"], callbacks=callbacks,
                           steps_per_epoch=len(batches), verbose=0, shuffle=False)

    def go_on():
        over_time = t.max_train_seconds and state["train_seconds"] > t.max_train_seconds
        return state["epoch"] < t.epochs and state["wait"] < t.patience and not over_time

    skip = int(state.get("step", 0))
    if skip and go_on():
        log(f"resuming at batch {skip} of {len(data) + skip} in epoch {state['epoch'] + 1}")
        fit(data, state["epoch"] + 1)  # the rest of the interrupted epoch
        data = _batches(run, pretrainer, train_rows, state, resumed_epoch=False)
    if go_on():
        fit(data, t.epochs)


def _commit(run: _Run, pretrainer, state: dict, log) -> dict:
    """The best epoch's weights, written into a stage that replaces the model folder in one
    step; refused when nothing was validated or the dataset was replaced during training."""
    if state["best_epoch"] < 0:
        raise TrainingError("no validation result was recorded; no model was written")
    pretrainer.load_weights(run.best_path)
    state["distribution"] = runtime.distribution_info(pretrainer)
    ds = run.ds
    if contracts.open_dataset(ds.root).manifest.get(contracts.MANIFEST_DIGEST) != \
            ds.manifest.get(contracts.MANIFEST_DIGEST):
        raise TrainingError(f"{ds.root}: the dataset was replaced while the model trained on it; no model was "
                            f"written (the checkpoints in {run.ckpt_dir} stay)")
    carry = ("checkpoints", "tensorboard") if os.path.abspath(run.run_dir) == os.path.abspath(run.output) else ()
    with fs.staged_dir(run.output, carry=carry) as stage:
        metadata = _finish(stage, ds, run.cfg, _network(run, pretrainer), state, run.vocab_snapshot, run.codes_info)
    log(f"model written to {run.output} (best epoch {state['best_epoch']}, valid "
        f"{state.get('select_metric', 'ndcg@10')} {state['best']:.4f})")
    return metadata


def fill_from_dataset(cfg: PTUMConfig, ds: contracts.SequenceDataset) -> Tuple[PTUMConfig, Optional[np.ndarray]]:
    """(a copy of `cfg` with the dataset's vocabulary sizes and time availability, title word
    ids per token or None). The caller's config is left as it was."""
    import copy

    cfg = copy.deepcopy(cfg)
    m = cfg.model
    m.num_items = ds.num_item_tokens
    m.num_behaviors = ds.num_behavior_tokens
    if not ds.has_time:
        m.use_time = False
    if not m.use_text:
        return cfg, None
    catalog = ds.read_vocab_table(contracts.CATALOG)
    words = ds.read_vocab_table(contracts.WORDS_VOCAB)
    if catalog is None or words is None:
        raise TrainingError(f"{ds.root}: model.use_text needs an item catalog with titles "
                            "(tokenize with --items, or the movielens format)")
    m.num_words = words.num_rows + contracts.FIRST_WORD_ID
    table = np.zeros((m.num_items, m.text_max_words), np.int32)
    for tok, wids in zip(catalog.column("token_id").to_pylist(), catalog.column("word_ids").to_pylist()):
        if tok is not None and 0 <= tok < m.num_items:
            w = wids[: m.text_max_words]
            table[tok, : len(w)] = w
    return cfg, table


def dataset_window(ds: contracts.SequenceDataset) -> int:
    return int(ds.manifest.get("parameters", {}).get("window") or 10)


def selection_metric(cfg: PTUMConfig, ds: contracts.SequenceDataset) -> str:
    """What early stopping and model selection watch (train.select_metric)."""
    sel = cfg.train.select_metric
    windowed = ds.manifest.get("split_scheme") == "window"
    if cfg.model.architecture == "generative":
        if sel == "window_recall@10":
            raise TrainingError("train.select_metric=window_recall@10 needs a user embedding; the generative model "
                                "is selected by next-item ndcg@10")
        return "ndcg@10"
    if sel == "auto":
        return "window_recall@10" if windowed and cfg.model.user_embedding == "profile" else "ndcg@10"
    if sel == "window_recall@10" and not windowed:
        raise TrainingError(f"{ds.root}: train.select_metric=window_recall@10 needs a dataset tokenized with "
                            "--split window (its valid rows end in a window never trained on)")
    return sel


def train_window(cfg: PTUMConfig) -> int:
    o, m = cfg.objective, cfg.model
    if m.architecture == "generative":
        return m.max_len + 1    # every item after the first is a target
    if not o.nbp:
        return m.max_len
    return m.max_len + (1 if o.nbp_from == "every" else o.k)


def _rng_states(model):
    """Seed-generator states (dropout masks, MBP masks, negatives): saved with each
    checkpoint so a resumed run draws exactly what the uninterrupted run would."""
    return [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]


def _warm_start_encoder(base_dir: str, ds, cfg: PTUMConfig, title_words, log):
    """(the base model's trained encoder, or None; what happened) for warm-starting.

    Only when the base was trained on the same item vocabulary (hash) and has the same model
    config: token ids then mean the same items, and every weight has the same shape."""
    info = {"from": base_dir, "used": False}
    try:
        base, base_meta, base_cfg = load_model_dir(base_dir)
    except (ModelError, OSError, ValueError) as e:
        info["reason"] = f"base model unreadable: {e}"
    else:
        if base_meta.get("vocab_hash") != ds.vocab_hash:
            info["reason"] = f"vocabulary changed ({base_meta.get('vocab_hash')} -> {ds.vocab_hash})"
        elif base_cfg.model != cfg.model:
            old, new = base_cfg.to_dict()["model"], cfg.to_dict()["model"]
            info["reason"] = f"model config differs in {sorted(k for k, v in new.items() if old.get(k) != v)}"
        else:
            if base.title_words is not None and title_words is not None:
                base.title_words.assign(np.asarray(title_words, dtype="int32"))  # this dataset's catalog
            info.update(used=True, reason="same vocabulary and model config")
            log(f"warm start from {base_dir}")
            return base, info
    log(f"no warm start from {base_dir}: {info['reason']}")
    return None, info


def _query_definition(cfg: PTUMConfig) -> str:
    return ("attentive pooling of the hidden states" if cfg.model.user_vector == "pooled"
            else "hidden state at the newest behavior") + " + future-position embedding k=1"


def _embedding_definition(cfg: PTUMConfig) -> dict:
    """Which vector is the exported user embedding (recorded in every model's metadata)."""
    if cfg.model.user_embedding == "profile":
        return {"readout": "profile", "vector": "profile",
                "definition": "profile: the history's item bag (sum of the profile's input item embeddings / "
                              "sqrt(n)) + a projection of the mean hidden state"
                              + (" and the newest one" if cfg.model.profile_newest else "")
                              + ", trained to predict the user's item bag (objective.bag"
                              + (f", future window {cfg.objective.bag_future}" if cfg.objective.bag_future else "")
                              + ")",
                "dim": cfg.model.embedding_dim,
                "scoring": "dot product with the profile item table + per-item bias (embedding_space())"}
    return {"readout": cfg.model.user_vector, "vector": "next_item_query", "definition": _query_definition(cfg),
            "dim": cfg.model.embedding_dim, "scoring": "dot product with item_table()"}


def _finish(output, ds, cfg, encoder, state, vocab_snapshot: Dict[str, bytes], codes_info=None) -> dict:
    """Write the finished model's files into `output` (a stage that replaces the model folder)."""
    atomic_save_keras(encoder, os.path.join(output, ENCODER_FILE))
    for rel, data in vocab_snapshot.items():   # vocab/<name>, as verified at the start
        os.makedirs(os.path.dirname(os.path.join(output, rel)), exist_ok=True)
        with open(os.path.join(output, rel), "wb") as f:
            f.write(data)
    with open(os.path.join(output, "config.json"), "w") as f:
        f.write(cfg.dump_json())
    with open(os.path.join(output, "history.json"), "w") as f:
        json.dump(state["history"], f, indent=1)
    if codes_info is not None:
        kind = {"model": GENERATIVE_MODEL, "vocab_hash": ds.vocab_hash, "item_codes": codes_info,
                "beam_size": cfg.generative.beam_size}
    else:
        kind = {"model": "ptum-user-encoder", "vocab_hash": ds.vocab_hash,
                "user_embedding": _embedding_definition(cfg),
                "next_item_query": {"readout": cfg.model.user_vector, "definition": _query_definition(cfg),
                                    "used_by": ["top_k", "ptum evaluate (next-item metrics)"]}}
    metadata = {
        **kind,
        "select_metric": state.get("select_metric", "ndcg@10"),
        "max_len": cfg.model.max_len,
        "time_buckets": cfg.model.time_buckets if cfg.model.use_time else 0,
        "length_buckets": cfg.train.length_buckets,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_seconds": round(state["train_seconds"], 2),
        "valid": {state.get("select_metric", "ndcg@10"): state["best"]},
        "warm_start": state.get("warm_start", {"used": False, "reason": "not requested"}),
        "distribution": state.get("distribution", {"strategy": "none", "replicas": 1}),
        "training_data": {"path": ds.root, "manifest_created": ds.manifest.get("created"),
                          "inputs": ds.manifest.get("inputs"), "counts": ds.manifest.get("counts"),
                          "rows": state.get("rows")},
        "stack": runtime.versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # What decides the model's behaviour besides metadata.json: loaders verify these.
        "files_sha256": file_digests(output, [ENCODER_FILE, "config.json", *vocab_snapshot]),
    }
    contracts.write_json_atomic(os.path.join(output, METADATA), metadata)
    return metadata
