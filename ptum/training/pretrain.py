"""Pre-training: dataset -> PTUM model directory (with resume after a kill). The model
directory's layout is described in `ptum.model.saving`, which also loads it.
"""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ptum.data import contracts
from ptum import fs
from ptum.config import PTUMConfig
from ptum.model.saving import ENCODER_FILE, METADATA, ModelError, atomic_save_keras, file_digests, load_model_dir


class TrainingError(Exception):
    """Training cannot start or went wrong (bad data, NaN loss, vocab mismatch)."""


def _versions() -> Dict[str, str]:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for pkg in ("keras", "tensorflow", "jax", "numpy", "pyarrow", "tfx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


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


def memory_estimate(cfg: PTUMConfig) -> Dict[str, int]:
    """Bytes a training run needs at least, by part (a float32 lower bound: weights with their
    gradients and two Adam moments; per batch, the activations kept for the backward pass,
    attention maps and the objective's score matrix; evaluation's scores over the catalog)."""
    m, o, t = cfg.model, cfg.objective, cfg.train
    d, L, B = m.embedding_dim, m.max_len, t.batch_size
    ff = m.ff_dim or 4 * d
    params = (m.num_items * d * (2 if m.user_embedding == "profile" else 1) + m.num_blocks * (4 * d * d + 2 * d * ff)
              + (m.num_words * d if m.use_text else 0) + (L + m.future_positions + m.time_buckets + m.num_behaviors) * d)
    activations = B * L * m.num_blocks * (6 * d + ff) + B * m.num_heads * L * L * m.num_blocks
    candidates = m.num_items if o.negatives == "full" else o.num_negatives
    positions = L if o.nbp_from == "every" else 1
    scores = B * positions * o.k * candidates * (2 if o.negatives == "sampled" else 1)
    if o.bag:
        scores += B * m.num_items
    return {"weights": 4 * 4 * params, "activations": 4 * 2 * activations, "scores": 4 * 2 * scores,
            "evaluation": 4 * t.eval_batch_size * m.num_items}


def _available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(cfg: PTUMConfig, available: Optional[int] = None) -> Dict[str, int]:
    """Refuse, before anything is built, a config whose lower-bound estimate exceeds the memory
    this machine has available (a run that would grow until the kernel kills it)."""
    parts = memory_estimate(cfg)
    available = _available_memory() if available is None else available
    total = sum(parts.values())
    if available is not None and total > available:
        gib = 1 << 30
        detail = ", ".join(f"{k} {v / gib:.1f}" for k, v in parts.items())
        raise TrainingError(f"this config needs at least {total / gib:.1f} GiB ({detail}) and {available / gib:.1f} GiB "
                            "is available: lower train.batch_size, model.max_len, objective.num_negatives or "
                            "model.embedding_dim")
    return parts


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


def dataset_window(ds: contracts.SequenceDataset) -> int:
    return int(ds.manifest.get("parameters", {}).get("window") or 10)


def selection_metric(cfg: PTUMConfig, ds: contracts.SequenceDataset) -> str:
    """What early stopping and model selection watch (train.select_metric)."""
    sel = cfg.train.select_metric
    windowed = ds.manifest.get("split_scheme") == "window"
    if sel == "auto":
        return "window_recall@10" if windowed and cfg.model.user_embedding == "profile" else "ndcg@10"
    if sel == "window_recall@10" and not windowed:
        raise TrainingError(f"{ds.root}: train.select_metric=window_recall@10 needs a dataset tokenized with "
                            "--split window (its valid rows end in a window never trained on)")
    return sel


def train_window(cfg: PTUMConfig) -> int:
    o, m = cfg.objective, cfg.model
    if not o.nbp:
        return m.max_len
    return m.max_len + (1 if o.nbp_from == "every" else o.k)


def _set_precision(policy: str) -> None:
    import keras
    if policy == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    elif policy == "fp16":
        keras.mixed_precision.set_global_policy("mixed_float16")


def distribution_scope():
    """tf.distribute strategy from the environment (TF backend), else a no-op scope.

    TPU when TPU_NAME is set; MultiWorkerMirrored when TF_CONFIG names a cluster;
    Mirrored when more than one GPU is visible (or the CPU was split into several logical
    devices); the default strategy otherwise. Under
    JAX, keras.distribution.DataParallel over all devices when there is more than one.
    """
    import contextlib
    import keras

    if keras.backend.backend() == "jax":
        import jax
        if len(jax.devices()) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel())
        return contextlib.nullcontext()
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf
    if os.environ.get("TPU_NAME"):
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ["TPU_NAME"])
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver).scope()
    if os.environ.get("TF_CONFIG") and json.loads(os.environ["TF_CONFIG"]).get("cluster"):
        return tf.distribute.MultiWorkerMirroredStrategy().scope()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy().scope()
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) > 1:   # the host CPU split into logical devices on purpose (tf.config)
        return tf.distribute.MirroredStrategy([d.name for d in cpus]).scope()
    return tf.distribute.get_strategy().scope()


def distribution_info(model) -> dict:
    """Which data parallelism trained `model`: {"strategy", "replicas"} (recorded in metadata)."""
    import keras

    if keras.backend.backend() == "jax":
        d = keras.distribution.distribution()
        if d is None:
            return {"strategy": "none", "replicas": 1}
        return {"strategy": type(d).__name__, "replicas": int(np.prod(d.device_mesh.shape))}
    if keras.backend.backend() == "tensorflow":
        s = model.distribute_strategy
        return {"strategy": type(s).__name__.strip("_"), "replicas": int(s.num_replicas_in_sync)}
    return {"strategy": "none", "replicas": 1}


def _build_on(model, batches) -> None:
    """Build every layer (calling the model on a real batch) and the optimizer, in the model's
    strategy scope: Keras' own build under tf.distribute averages a distributed batch across
    replicas (float ids for integer inputs; an error when the batch splits unevenly)."""
    import tensorflow as tf

    x = {k: tf.constant(v) for k, v in batches[0].items()}
    with model.distribute_strategy.scope():
        model(x, training=False)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def _jit(cfg: PTUMConfig):
    v = str(cfg.train.jit_compile).lower()
    if v in ("true", "false"):
        return v == "true"
    return "auto"


def _tensorboard_available() -> bool:
    """Keras' TensorBoard callback needs TensorFlow and the tensorboard package."""
    import importlib.util

    import keras
    return (keras.backend.backend() == "tensorflow"
            and importlib.util.find_spec("tensorboard") is not None)


def _rng_states(model):
    """Seed-generator states (dropout masks, MBP masks, negatives): saved with each
    checkpoint so a resumed run draws exactly what the uninterrupted run would."""
    return [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_line(epoch: int, epochs: int, elapsed: float, **metrics) -> str:
    """One progress line per epoch: `epoch 3/30  loss 0.4123  valid_auc 0.7012  (12s, ETA <= 1m48s)`.
    The ETA is the bound for the remaining epochs at the mean epoch time so far (early stopping
    may end the run sooner)."""
    parts = [f"epoch {epoch:>3}/{epochs}"]
    parts += [f"{k.replace('_', ' ')} {v:.4f}" for k, v in metrics.items() if v is not None]
    eta = elapsed / max(epoch, 1) * max(epochs - epoch, 0)
    return "  ".join(parts) + f"  ({_duration(elapsed)}, ETA <= {_duration(eta)})"


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


def is_chief(tf_config: Optional[str] = None) -> bool:
    """Whether this process writes the model: always, unless TF_CONFIG names a cluster and this
    task is not its chief (the task of type "chief", else worker 0)."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    conf = json.loads(raw) if raw.strip() else {}
    cluster, task = conf.get("cluster") or {}, conf.get("task") or {}
    if not cluster:
        return True
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def pretrain_rows(ds: contracts.SequenceDataset, train_rows, valid_rows, output: str, cfg: PTUMConfig,
                  log: Callable[[str], None] = print, resume: bool = True,
                  warm_start: Optional[str] = None, run_dir: Optional[str] = None) -> dict:
    """Train on given rows, holding the output folder's lock (see `_pretrain_rows`). In a
    multi-worker cluster only the chief writes `output`; the other workers write their
    checkpoints to a temporary folder of their own. `run_dir`: where checkpoints and
    TensorBoard logs go (default: `output`; the TFX Trainer passes its model_run_dir, so the
    model artifact holds only the model)."""
    if not is_chief():
        import tempfile

        output = tempfile.mkdtemp(prefix="ptum-worker-")
        run_dir = None
        log(f"not the chief of the TF_CONFIG cluster: this worker writes to {output}")
    contracts.check_output_kind(output, "model", TrainingError)
    with contracts.output_lock(output, "ptum pretrain", TrainingError):
        return _pretrain_rows(ds, train_rows, valid_rows, output, cfg, log=log, resume=resume,
                              warm_start=warm_start, run_dir=run_dir)


def _pretrain_rows(ds: contracts.SequenceDataset, train_rows, valid_rows, output: str, cfg: PTUMConfig,
                   log: Callable[[str], None] = print, resume: bool = True,
                   warm_start: Optional[str] = None, run_dir: Optional[str] = None) -> dict:
    """Train on given rows (the TFX Trainer reads them through its data accessor); `ds`
    supplies the manifest and vocabulary. `warm_start`: a finished model directory whose
    encoder weights initialise this model when vocabulary and model config match.
    `run_dir`: checkpoints and TensorBoard logs (default `output`)."""
    import keras

    from ptum.training.callbacks import Checkpoint, EpochRecord, KeepBest, NaNGuard, TimeLimit, TrainClock, ValidationMetrics
    from ptum.data.batches import TrainBatches
    from ptum.evaluation.ranking import NonFiniteScores, rank_metrics
    from ptum.model.encoder import UserEmbedder, build_encoder_for, build_pretrainer

    data_dir = ds.root
    if (train_rows.lengths >= 2).sum() == 0:
        raise TrainingError(f"{data_dir}: the train split has no sequence with 2 or more behaviors")
    cfg, title_words = fill_from_dataset(cfg, ds)
    cfg.validate()
    check_memory(cfg)
    t = cfg.train
    # The vocabularies the model will carry, read (and verified) now: a dataset folder
    # rewritten during training cannot hand the model other vocabularies than it trained on.
    vocab_snapshot = ds.vocab_files()
    run_dir = run_dir or output
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    state_path = os.path.join(ckpt_dir, "state.json")
    latest = os.path.join(ckpt_dir, "latest.keras")
    best_path = os.path.join(ckpt_dir, "best.weights.h5")
    if resume and os.path.exists(state_path) and os.path.exists(latest):
        # Refused before anything in the output is touched.
        with open(state_path) as f:
            saved_vocab = json.load(f).get("vocab_hash")
        if saved_vocab != ds.vocab_hash:
            raise TrainingError(f"{output}: checkpoint was trained on vocabulary {saved_vocab}, "
                                f"dataset has {ds.vocab_hash}; use a new --output or --no-resume")
    os.makedirs(ckpt_dir, exist_ok=True)
    state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "wait": 0, "history": [], "train_seconds": 0.0,
             "vocab_hash": ds.vocab_hash, "config": cfg.to_dict()}
    keras.utils.set_random_seed(t.seed)
    if t.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    _set_precision(t.mixed_precision)
    resumed = False
    with distribution_scope():
        if resume and os.path.exists(state_path) and os.path.exists(latest):
            with open(state_path) as f:
                saved = json.load(f)
            if saved.get("config") != cfg.to_dict():
                log("checkpoint config differs from this run's: starting over")
            else:
                state = saved
                pretrainer = keras.saving.load_model(latest, compile=True)
                for var, value in zip(_rng_states(pretrainer), state.get("rng_states", [])):
                    var.assign(np.asarray(value, dtype=var.dtype))
                resumed = True
                log(f"resuming from {latest} after epoch {state['epoch']}")
        if not resumed:
            encoder = None
            if warm_start:
                encoder, state["warm_start"] = _warm_start_encoder(warm_start, ds, cfg, title_words, log)
            if encoder is None:
                encoder = build_encoder_for(cfg, title_words)
            pretrainer = build_pretrainer(cfg, encoder)
            optimizer = keras.optimizers.AdamW(learning_rate=t.learning_rate, weight_decay=t.weight_decay,
                                               clipnorm=t.clipnorm or None)
            pretrainer.compile(optimizer=optimizer, jit_compile=_jit(cfg),
                               steps_per_execution=t.steps_per_execution)
    encoder = pretrainer.encoder
    embedder = UserEmbedder(encoder, name="user_embedder")
    select = selection_metric(cfg, ds)
    state["select_metric"] = select

    def window_metrics():
        """Valid rows of a window split: the train part is the input, their last W the window."""
        from ptum.evaluation.embeddings import embed_prefixes, window_retrieval
        from ptum.evaluation.ranking import embedding_space_numpy

        def embed(rows, idx, ends):
            return embed_prefixes(encoder.user_embedding, rows, idx, ends, cfg.model.max_len, t.length_buckets,
                                  time_b, t.eval_batch_size)

        table, bias = embedding_space_numpy(encoder)
        return window_retrieval(embed, valid_rows, table, dataset_window(ds), bias=bias)
    width = train_window(cfg)
    time_b = cfg.model.time_buckets if cfg.model.use_time else 0
    skip = int(state.get("step", 0))  # batches of state["epoch"] already done (step checkpoint)
    # JAX's DataParallel shards each batch evenly over the devices: pad to a multiple of them
    # (tf.distribute splits uneven batches itself).
    multiple = distribution_info(pretrainer)["replicas"] if keras.backend.backend() == "jax" else 1
    data = TrainBatches(train_rows, t.batch_size, width, t.length_buckets, t.seed, time_b, epoch=state["epoch"],
                        multiple=multiple,
                        skip=skip)
    full_len = len(data) + skip

    def save_checkpoint():
        atomic_save_keras(pretrainer, latest)
        state["rng_states"] = [np.asarray(keras.ops.convert_to_numpy(v.value)).tolist()
                               for v in _rng_states(pretrainer)]
        tmp = state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, state_path)

    def ranking(epoch):
        """Next-item metrics on the valid rows (and the window retrieval of a window split)."""
        try:
            m = rank_metrics(embedder, valid_rows, cfg.model.max_len, t.length_buckets, time_b,
                             t.eval_batch_size, ks=(10,))
            out = {"ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"]}
            if select == "window_recall@10":
                w = window_metrics()
                out.update({"window_recall@10": w["window_recall@10"], "window_ndcg@10": w["window_ndcg@10"]})
        except NonFiniteScores as e:
            raise TrainingError(f"epoch {epoch + 1}: {e}; no model was written") from e
        return out

    def line(epoch, logs):
        log(epoch_line(epoch + 1, t.epochs, logs["seconds"], loss=float(logs["loss"]),
                       **{"valid_ndcg@10": logs.get("val_ndcg@10"),
                          "valid_window_recall@10": logs.get("val_window_recall@10")}))

    # In this order at each epoch's end: the loss must be finite; the clock stops before
    # validation; the best weights and patience see the validation; the history records it all;
    # the checkpoint saves the state the others left; then the time limit.
    clock = TrainClock(state)
    callbacks = [NaNGuard(TrainingError, hint=": lower the learning rate or check the data; no model was written"),
                 clock, ValidationMetrics(ranking, every=t.eval_every, timed=True),
                 KeepBest("val_" + select, state, t.patience, keep=lambda _: pretrainer.save_weights(best_path)),
                 EpochRecord(state, line),
                 Checkpoint(save_checkpoint, state, clock, t.checkpoint_every_steps, full_len, offset=skip),
                 TimeLimit(t.max_train_seconds)]
    if _tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"),
                                                     write_graph=False, update_freq="epoch"))

    def fit(batches, epochs):
        if keras.backend.backend() == "tensorflow":
            from ptum.data.tf_input import train_dataset
            fit_data = train_dataset(batches)
            if pretrainer.distribute_strategy.num_replicas_in_sync > 1:
                _build_on(pretrainer, batches)
        else:
            fit_data = batches
        pretrainer.fit(fit_data, epochs=epochs, initial_epoch=state["epoch"], callbacks=callbacks,
                       steps_per_epoch=len(batches), verbose=0, shuffle=False)

    def go_on():
        over_time = t.max_train_seconds and state["train_seconds"] > t.max_train_seconds
        return state["epoch"] < t.epochs and state["wait"] < t.patience and not over_time

    if skip and go_on():
        log(f"resuming at batch {skip} of {full_len} in epoch {state['epoch'] + 1}")
        fit(data, state["epoch"] + 1)  # the rest of the interrupted epoch
        data = TrainBatches(train_rows, t.batch_size, width, t.length_buckets, t.seed, time_b, epoch=state["epoch"],
                            multiple=multiple)
    if go_on():
        fit(data, t.epochs)
    if state["best_epoch"] < 0:
        raise TrainingError("no validation result was recorded; no model was written")
    pretrainer.load_weights(best_path)
    state["distribution"] = distribution_info(pretrainer)
    if contracts.open_dataset(ds.root).manifest.get(contracts.MANIFEST_DIGEST) != \
            ds.manifest.get(contracts.MANIFEST_DIGEST):
        raise TrainingError(f"{ds.root}: the dataset was replaced while the model trained on it; no model was "
                            f"written (the checkpoints in {ckpt_dir} stay)")
    carry = ("checkpoints", "tensorboard") if os.path.abspath(run_dir) == os.path.abspath(output) else ()
    with fs.staged_dir(output, carry=carry) as stage:
        metadata = _finish(stage, ds, cfg, encoder, state, vocab_snapshot)
    log(f"model written to {output} (best epoch {state['best_epoch']}, valid "
        f"{state.get('select_metric', 'ndcg@10')} {state['best']:.4f})")
    return metadata


def _finish(output, ds, cfg, encoder, state, vocab_snapshot: Dict[str, bytes]) -> dict:
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
    metadata = {
        "model": "ptum-user-encoder",
        "vocab_hash": ds.vocab_hash,
        "user_embedding": _embedding_definition(cfg),
        "next_item_query": {
            "readout": cfg.model.user_vector,
            "definition": _query_definition(cfg),
            "used_by": ["top_k", "ptum evaluate (next-item metrics)"],
        },
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
                          "inputs": ds.manifest.get("inputs"), "counts": ds.manifest.get("counts")},
        "stack": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # What decides the model's behaviour besides metadata.json: loaders verify these.
        "files_sha256": file_digests(output, [ENCODER_FILE, "config.json", *vocab_snapshot]),
    }
    contracts.write_json_atomic(os.path.join(output, METADATA), metadata)
    return metadata
