"""Where and how a training run executes: the tf.distribute strategy or JAX distribution,
mixed precision and XLA settings, the memory a config needs, which process of a cluster writes
the model, and the library versions recorded with it (pre-training and fine-tuning share these).
"""
from __future__ import annotations

import json
import os
import platform
from typing import Dict, Optional

import numpy as np

from ptum.config import PTUMConfig


class TrainingError(Exception):
    """Training cannot start or went wrong (bad data, NaN loss, vocab mismatch)."""


def versions() -> Dict[str, str]:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for pkg in ("keras", "tensorflow", "jax", "numpy", "pyarrow", "tfx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


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


def available_memory() -> Optional[int]:
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
    available = available_memory() if available is None else available
    total = sum(parts.values())
    if available is not None and total > available:
        gib = 1 << 30
        detail = ", ".join(f"{k} {v / gib:.1f}" for k, v in parts.items())
        raise TrainingError(f"this config needs at least {total / gib:.1f} GiB ({detail}) and {available / gib:.1f} GiB "
                            "is available: lower train.batch_size, model.max_len, objective.num_negatives or "
                            "model.embedding_dim")
    return parts


def set_precision(policy: str) -> None:
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


def build_on(model, batches) -> None:
    """Build every layer (calling the model on a real batch) and the optimizer, in the model's
    strategy scope: Keras' own build under tf.distribute averages a distributed batch across
    replicas (float ids for integer inputs; an error when the batch splits unevenly)."""
    import tensorflow as tf

    x = {k: tf.constant(v) for k, v in batches[0].items()}
    with model.distribute_strategy.scope():
        model(x, training=False)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def jit_setting(cfg: PTUMConfig):
    v = str(cfg.train.jit_compile).lower()
    if v in ("true", "false"):
        return v == "true"
    return "auto"


def tensorboard_available() -> bool:
    """Keras' TensorBoard callback needs TensorFlow and the tensorboard package."""
    import importlib.util

    import keras
    return (keras.backend.backend() == "tensorflow"
            and importlib.util.find_spec("tensorboard") is not None)


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
