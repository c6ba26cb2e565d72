"""The fine-tuned user model: the pre-trained encoder (still exposing the user embedding)
plus a task head (keras.ops only)."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ptum")
class FinetuneModel(keras.Model):
    """classify: user embedding -> MLP -> softmax over classes.
    ctr: [u, item, u * item] -> MLP -> sigmoid (the candidate is an item token id)."""

    def __init__(self, encoder, task="classify", n_outputs=2, hidden=128, dropout=0.2, **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.task, self.n_outputs = encoder, task, n_outputs
        self.hidden, self.dropout_rate = hidden, dropout
        self.dense = keras.layers.Dense(hidden, activation="relu", name="head_hidden")
        self.drop = keras.layers.Dropout(dropout)
        if task == "classify":
            self.out = keras.layers.Dense(n_outputs, activation="softmax", name="head_out", dtype="float32")
        else:
            self.out = keras.layers.Dense(1, activation="sigmoid", name="head_out", dtype="float32")

    def user_embedding(self, inputs, training=False):
        # A frozen encoder gives fixed embeddings: no dropout inside it.
        return self.encoder.user_embedding(inputs, training=bool(training) and self.encoder.trainable)

    def call(self, inputs, training=False):
        u = self.user_embedding(inputs, training=training)
        if self.task == "ctr":
            item = ops.take(self.encoder.item_table(training=False), inputs["candidate"], axis=0)
            u = ops.concatenate([u, item, u * item], axis=-1)
        return self.out(self.drop(self.dense(u), training=training))

    def get_config(self):
        return {"encoder": keras.saving.serialize_keras_object(self.encoder), "task": self.task,
                "n_outputs": self.n_outputs, "hidden": self.hidden, "dropout": self.dropout_rate,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
