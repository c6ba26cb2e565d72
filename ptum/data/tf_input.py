"""TensorFlow input pipeline (TF backend only; the JAX path uses ptum.data.batches directly).

Batches are cut from flat numpy arrays (one vectorised gather per batch, no
per-example Python) and fed to tf.data with a shape signature that allows every
length bucket; the epoch's order comes from (seed, epoch) as in the JAX path.
"""
from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import tensorflow as tf

from ptum.data.batches import FEATURES, TrainBatches


def train_dataset(batches: TrainBatches) -> tf.data.Dataset:
    """An endless tf.data.Dataset: epoch after epoch of `batches` (the number of batches
    per epoch is constant: fit with steps_per_epoch=len(batches))."""
    epoch = {"next": batches.epoch}

    def one_epoch():
        batches.set_epoch(epoch["next"])
        epoch["next"] += 1
        for i in range(len(batches)):
            yield batches[i]

    signature = {k: tf.TensorSpec((None, None), tf.int32) for k in FEATURES}
    return tf.data.Dataset.from_generator(one_epoch, output_signature=signature).repeat().prefetch(2)


def generator_dataset(batches: Iterator) -> tf.data.Dataset:
    """Batches from a Python iterator (structures of numpy arrays, e.g. (x, y, weight)), in
    the order given, as tf.data: any batch size (an epoch's last batch is short), the other
    dimensions as in the first batch."""
    first = next(batches)
    rest = itertools.chain([first], batches)
    spec = tf.nest.map_structure(
        lambda a: tf.TensorSpec((None,) + np.shape(a)[1:], tf.as_dtype(np.asarray(a).dtype)), first)
    return tf.data.Dataset.from_generator(lambda: rest, output_signature=spec)
