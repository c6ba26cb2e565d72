"""The fine-tuned user model: the pre-trained encoder (still exposing the user embedding)
plus a task head (keras.ops only)."""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ptum.data import contracts


class Standardize(keras.layers.Layer):
    """(x - mean) / sqrt(variance), with the moments fixed (non-trainable weights, in the config)."""

    def __init__(self, mean, variance, **kwargs):
        super().__init__(**kwargs)
        self.mean_values, self.variance_values = [float(v) for v in mean], [float(v) for v in variance]
        n = len(self.mean_values)
        self.shift = self.add_weight(shape=(n,), initializer=keras.initializers.Constant(self.mean_values),
                                     trainable=False, name="mean")
        self.scale = self.add_weight(shape=(n,), trainable=False, name="inverse_std",
                                     initializer=keras.initializers.Constant(
                                         [float(v) ** -0.5 for v in self.variance_values]))

    def call(self, x):
        return (x - ops.cast(self.shift, x.dtype)) * ops.cast(self.scale, x.dtype)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean_values, "variance": self.variance_values}


def head_forward(norm, dense, drop, out, u, item=None, training=False):
    """The head on a user embedding `u` (and, for ctr, the candidate's item embedding)."""
    if norm is not None:
        u = norm(u)
    if item is not None:
        u = ops.concatenate([u, item, u * item], axis=-1)
    if dense is None:           # linear: a logistic regression (dropout only inside the MLP)
        return out(u)
    return out(drop(dense(u), training=training))


class HeadOnly(keras.Model):
    """The head of a FinetuneModel (shared layers) on cached embeddings: {"u"[, "item"]} -> output.
    With the encoder frozen its embeddings are fixed, so the head trains on them directly."""

    def __init__(self, ft, **kwargs):
        super().__init__(**kwargs)
        self.norm, self.dense, self.drop, self.out = ft.norm, ft.dense, ft.drop, ft.out

    def call(self, inputs, training=False):
        return head_forward(self.norm, self.dense, self.drop, self.out, inputs["u"], inputs.get("item"), training)


@keras.saving.register_keras_serializable(package="ptum")
class FinetuneModel(keras.Model):
    """classify: user embedding -> head -> softmax over classes.
    ctr: [u, item, u * item] -> head -> sigmoid (the candidate is an item token id).

    head: "linear" (one dense layer: a logistic regression on the embedding) or "mlp"
    (dense relu `hidden` -> dropout -> dense). `mean`/`variance` (from the training users'
    embeddings) standardise the user embedding before the head, fixed during training, so
    the head sees unit-scale features as a linear probe does. `l2` penalises the head's
    kernels (sum of squares)."""

    def __init__(self, encoder, task="classify", n_outputs=2, hidden=128, dropout=0.2, head="mlp",
                 mean=None, variance=None, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        self.encoder, self.task, self.n_outputs = encoder, task, n_outputs
        self.hidden, self.dropout_rate, self.head, self.l2 = hidden, dropout, head, float(l2)
        self.mean = None if mean is None else [float(v) for v in mean]
        self.variance = None if variance is None else [float(v) for v in variance]
        self.norm = Standardize(self.mean, self.variance, name="head_standardize") if self.mean is not None else None
        reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        self.dense = (keras.layers.Dense(hidden, activation="relu", name="head_hidden", kernel_regularizer=reg)
                      if head == "mlp" else None)
        self.drop = keras.layers.Dropout(dropout)
        act, units = ("softmax", n_outputs) if task == "classify" else ("sigmoid", 1)
        self.out = keras.layers.Dense(units, activation=act, name="head_out", dtype="float32", kernel_regularizer=reg)

    def user_embedding(self, inputs, training=False):
        # A frozen encoder gives fixed embeddings: no dropout inside it.
        return self.encoder.user_embedding(inputs, training=bool(training) and self.encoder.trainable)

    def call(self, inputs, training=False):
        u = self.user_embedding(inputs, training=training)
        item = None
        if self.task == "ctr":
            item = ops.take(self.encoder.item_table(training=False), inputs["candidate"], axis=0)
        return head_forward(self.norm, self.dense, self.drop, self.out, u, item, training)

    def get_config(self):
        return {"encoder": keras.saving.serialize_keras_object(self.encoder), "task": self.task,
                "n_outputs": self.n_outputs, "hidden": self.hidden, "dropout": self.dropout_rate,
                "head": self.head, "mean": self.mean, "variance": self.variance, "l2": self.l2,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)

    def build_from_config(self, config):
        """Build every layer by calling the model once on a dummy batch of the saved input
        shapes: Keras cannot build a model with dict inputs by itself, and a head left unbuilt
        would not get its trained weights back when the model is loaded."""
        shapes = (config or {}).get("input_shape") or {}
        if not shapes:
            return
        batch = {name: np.full([1 if d is None else int(d) for d in shape],
                               contracts.FIRST_ITEM_ID if name in ("item_ids", "candidate") else 0, np.int32)
                 for name, shape in shapes.items()}
        self(batch, training=False)
