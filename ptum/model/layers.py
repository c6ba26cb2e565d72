"""Reusable Keras 3 layers (keras.ops only: they run on TensorFlow and JAX)."""
from __future__ import annotations

import keras
from keras import ops

from ptum.data import transforms


@keras.saving.register_keras_serializable(package="ptum")
class TransformerBlock(keras.layers.Layer):
    """Pre-LN transformer block: x + MHA(LN(x)), then x + FFN(LN(x)), with a padding mask."""

    def __init__(self, dim, num_heads, ff_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.ff_dim, self.dropout_rate = dim, num_heads, ff_dim, dropout
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_attention")
        self.attention = keras.layers.MultiHeadAttention(num_heads, dim // num_heads, dropout=dropout,
                                                         name="attention")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_ffn")
        self.ff1 = keras.layers.Dense(ff_dim, activation="gelu", name="ffn_in")
        self.ff2 = keras.layers.Dense(dim, name="ffn_out")
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        self.ln1.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.ln2.build(input_shape)
        self.ff1.build(input_shape)
        self.ff2.build(tuple(input_shape[:-1]) + (self.ff_dim,))
        self.built = True

    def call(self, x, attention_mask, training=False):
        h = self.ln1(x)
        h = self.attention(h, h, attention_mask=attention_mask, training=training)
        x = x + self.drop(h, training=training)
        h = self.ff2(self.drop(self.ff1(self.ln2(x)), training=training))
        return x + self.drop(h, training=training)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads,
                "ff_dim": self.ff_dim, "dropout": self.dropout_rate}


@keras.saving.register_keras_serializable(package="ptum")
class AttentivePooling(keras.layers.Layer):
    """PTUM's additive attention pooling: softmax(v^T tanh(W h)) over valid positions."""

    def __init__(self, hidden=64, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.proj = keras.layers.Dense(hidden, activation="tanh", name="proj")
        self.score = keras.layers.Dense(1, use_bias=False, name="score")

    def build(self, input_shape):
        self.proj.build(input_shape)
        self.score.build(tuple(input_shape[:-1]) + (self.hidden,))
        self.built = True

    def call(self, x, mask):
        logits = ops.squeeze(self.score(self.proj(x)), -1)
        logits = ops.where(mask, ops.cast(logits, "float32"), -1e9)
        weights = ops.softmax(logits, axis=-1)
        weights = ops.where(mask, weights, 0.0)
        weights = weights / ops.maximum(ops.sum(weights, axis=-1, keepdims=True), 1e-9)
        return ops.sum(ops.expand_dims(ops.cast(weights, x.dtype), -1) * x, axis=1)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


@keras.saving.register_keras_serializable(package="ptum")
class TitleEncoder(keras.layers.Layer):
    """PTUM's behavior text encoder: word + word-position embeddings, one multi-head
    self-attention layer, attentive pooling -> one vector per item title."""

    def __init__(self, num_words, dim, max_words, num_heads=2, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_words, self.dim, self.max_words = num_words, dim, max_words
        self.num_heads, self.dropout_rate = num_heads, dropout
        self.words = keras.layers.Embedding(num_words, dim, name="words")
        self.positions = keras.layers.Embedding(max_words, dim, name="word_positions")
        self.attention = keras.layers.MultiHeadAttention(num_heads, dim // num_heads, name="attention")
        self.pool = AttentivePooling(dim, name="pool")
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        self.words.build(input_shape)
        self.positions.build((self.max_words,))
        shape = tuple(input_shape) + (self.dim,)
        self.attention.build(shape, shape)
        self.pool.build(shape)
        self.built = True

    def call(self, word_ids, training=False):
        mask = ops.not_equal(word_ids, 0)
        x = self.words(word_ids) + self.positions(ops.arange(ops.shape(word_ids)[1]))[None]
        x = self.drop(x, training=training)
        att_mask = ops.logical_and(mask[:, :, None], mask[:, None, :])
        x = x + self.attention(x, x, attention_mask=att_mask, training=training)
        has_words = ops.any(mask, axis=-1, keepdims=True)
        return ops.where(has_words, self.pool(x, mask), 0.0)

    def get_config(self):
        return {**super().get_config(), "num_words": self.num_words, "dim": self.dim,
                "max_words": self.max_words, "num_heads": self.num_heads, "dropout": self.dropout_rate}


@keras.saving.register_keras_serializable(package="ptum")
class SequencePreprocessing(keras.layers.Layer):
    """Right-padded rows (item ids, behavior ids, timestamps: [B, T]; lengths: [B]) -> the
    encoder's inputs: the newest `width` behaviors left-padded, and their log2 time-gap buckets
    (0 `time_buckets`: none), in keras.ops. The arithmetic is ptum.data.transforms', which the numpy
    input pipeline of training and evaluation (ptum.data.batches.pad_batch) runs too; the SavedModel's
    signatures, and so the batch embedding export, run it through this layer. Under JAX, turn on
    64-bit integers (JAX_ENABLE_X64=1) before feeding epoch timestamps: JAX truncates int64 to
    int32 otherwise, and time gaps come out wrong."""

    def __init__(self, width: int, time_buckets: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.width, self.time_buckets = int(width), int(time_buckets)

    def call(self, item_ids, behavior_ids, timestamps, lengths):
        columns = [ops.cast(x, "int64") for x in (item_ids, behavior_ids, timestamps)]
        (ids, beh, ts), valid = transforms.window(columns, ops.cast(lengths, "int64"), self.width, ops)
        buckets = (transforms.time_buckets(ts, valid, self.time_buckets, ops) if self.time_buckets
                   else ops.zeros_like(ts))
        return {"item_ids": ops.cast(ids, "int32"), "behavior_ids": ops.cast(beh, "int32"),
                "time_buckets": ops.cast(buckets, "int32")}

    def get_config(self):
        return {**super().get_config(), "width": self.width, "time_buckets": self.time_buckets}
