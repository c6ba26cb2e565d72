"""TensorFlow input pipeline (TF backend only; the JAX path uses ptum.data directly).

Batches are cut from flat numpy arrays (one vectorised gather per batch, no
per-example Python) and fed to tf.data with a shape signature that allows every
length bucket; the epoch's order comes from (seed, epoch) as in the JAX path.
"""
from __future__ import annotations

import tensorflow as tf

from ptum.data import FEATURES, TrainBatches


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
