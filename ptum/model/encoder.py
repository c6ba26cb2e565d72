"""The PTUM user model's backbone: a behavior encoder + user encoder (`UserEncoder`), and the
`UserEmbedder` that turns a behavior batch into the next-item query. The pre-training tasks
that train it are in `ptum.model.objectives`, the fine-tuning heads in `ptum.model.heads`.

keras.ops only, so the same code trains under KERAS_BACKEND=tensorflow and jax.
Batches are dicts of int32 [batch, time] arrays, left-padded (the newest behavior
is always the last column): item_ids, behavior_ids, time_buckets.
"""
from __future__ import annotations

from typing import Optional

import keras
import numpy as np
from keras import ops

from ptum.config import ModelConfig
from ptum.data import contracts
from ptum.model.layers import AttentivePooling, TitleEncoder, TransformerBlock

NEG_INF = -1e9


@keras.saving.register_keras_serializable(package="ptum")
class UserEncoder(keras.Model):
    """Behavior sequence -> hidden states -> the user vectors.

    The next-item query is the readout (`user_vector`: attentive pooling or the last hidden
    state) plus the first future-position embedding, scored by dot product with
    `item_table()`. The exported user embedding is that query, or (embedding_vector
    "profile") the profile vector, scored in `embedding_space()`.
    """

    def __init__(self, config, title_words=None, pooling=True, **kwargs):
        """`config`: the model section (ptum.config.ModelConfig or its dict) with the dataset's
        vocabulary sizes filled in; the Keras config saves it whole (get_config)."""
        super().__init__(**kwargs)
        self.settings = m = config if isinstance(config, ModelConfig) else ModelConfig(**config)
        # The settings as they take effect (a switched-off input has size 0), read by the methods.
        self.num_items, self.embedding_dim, self.max_len = m.num_items, m.embedding_dim, m.max_len
        self.attention, self.user_vector = m.attention, m.user_vector
        self.ff_dim = m.ff_dim or 4 * m.embedding_dim
        self.num_behaviors = m.num_behaviors if m.use_behavior else 0
        self.time_buckets = m.time_buckets if m.use_time else 0
        self.num_words = m.num_words if m.use_text else 0
        self.text_max_words = m.text_max_words
        self.embedding_vector, self.profile_newest = m.user_embedding, m.profile_newest
        title_words = title_words if m.use_text else None
        num_items, embedding_dim, dropout = m.num_items, m.embedding_dim, m.dropout
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.item_embedding = keras.layers.Embedding(num_items, embedding_dim, embeddings_initializer=init,
                                                     name="item_embedding")
        self.position_embedding = keras.layers.Embedding(m.max_len + 1, embedding_dim, embeddings_initializer=init,
                                                         name="position_embedding")
        self.behavior_embedding = (keras.layers.Embedding(self.num_behaviors, embedding_dim, embeddings_initializer=init,
                                                          name="behavior_embedding") if self.num_behaviors else None)
        self.time_embedding = (keras.layers.Embedding(self.time_buckets + 1, embedding_dim, embeddings_initializer=init,
                                                      name="time_embedding") if self.time_buckets else None)
        self.future_embedding = keras.layers.Embedding(m.future_positions, embedding_dim,
                                                       embeddings_initializer="zeros", name="future_embedding")
        self.title_encoder = (TitleEncoder(self.num_words, embedding_dim, m.text_max_words, m.text_heads, dropout,
                                           name="title_encoder") if self.num_words else None)
        self.input_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="input_norm")
        self.blocks = [TransformerBlock(embedding_dim, m.num_heads, self.ff_dim, dropout, name=f"block_{i}")
                       for i in range(m.num_blocks)]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")
        # Attentive pooling, built only when something reads it (a pooled readout or PTUM's pooled
        # MBP head): an unused layer would get no gradients. Models saved before this flag
        # default to having it, so their weights still load.
        self.pooling = bool(pooling or m.user_vector == "pooled")
        self.pool = AttentivePooling(embedding_dim, name="user_pool") if self.pooling else None
        # The profile (embedding_vector == "profile"): the exported user embedding, apart from
        # the next-item query. The whole history's item bag (sum of its own input item
        # embeddings / sqrt(n)) plus a projection of the mean hidden state (zero at start),
        # scored against its own output item table and per-item bias (trained by the bag
        # objective: a Mult-DAE encoder/decoder over the transformer).
        self.has_profile = m.user_embedding == "profile"
        if self.has_profile:
            self.profile_inputs = keras.layers.Embedding(num_items, embedding_dim, embeddings_initializer=init,
                                                         name="profile_inputs")
            self.profile_proj = keras.layers.Dense(embedding_dim, kernel_initializer="zeros", name="profile_proj")
            self.profile_items = keras.layers.Embedding(num_items, embedding_dim, embeddings_initializer=init,
                                                        name="profile_items")
            self.profile_bias = self.add_weight(shape=(num_items,), initializer="zeros", name="profile_bias")
        self.drop = keras.layers.Dropout(dropout)
        self.title_words = None
        if self.num_words:
            self.title_words = self.add_weight(shape=(num_items, m.text_max_words), dtype="int32",
                                               initializer="zeros", trainable=False, name="title_words")
            if title_words is not None:
                self.title_words.assign(np.asarray(title_words, dtype="int32"))
        self.build(None)

    def build(self, input_shape=None):
        # Built eagerly: the item table is needed before the first sequence is encoded.
        d = self.embedding_dim
        self.item_embedding.build((None,))
        self.position_embedding.build((None,))
        self.future_embedding.build((None,))
        for emb in (self.behavior_embedding, self.time_embedding):
            if emb is not None:
                emb.build((None,))
        if self.title_encoder is not None:
            self.title_encoder.build((self.num_items, self.text_max_words))
        self.input_norm.build((None, None, d))
        for block in self.blocks:
            block.build((None, None, d))
        self.final_norm.build((None, None, d))
        if self.pool is not None:
            self.pool.build((None, None, d))
        if self.has_profile:
            self.profile_inputs.build((None,))
            self.profile_proj.build((None, (2 if self.profile_newest else 1) * d))
            self.profile_items.build((None,))
        self.built = True

    # ---------------------------------------------------------------- items
    def item_table(self, training=False):
        """Encodings of every item token id [num_items, dim] (id embedding + title text)."""
        table = self.item_embedding.embeddings
        if self.title_encoder is not None:
            table = table + self.title_encoder(self.title_words.value, training=training)
        return table

    def encode_titles(self, word_ids):
        """Title encodings for items outside the vocabulary (catalog-only items)."""
        if self.title_encoder is None:
            raise ValueError("this model has no title encoder (model.use_text is off)")
        return self.title_encoder(word_ids)

    # ---------------------------------------------------------------- users
    def call(self, inputs, training=False, item_table=None):
        """Returns hidden states [B, T, d] and the validity mask [B, T]. `item_table`
        replaces the item encodings (export: the table extended with catalog-only items)."""
        ids = inputs["item_ids"]
        mask = ops.not_equal(ids, contracts.PAD_ID)
        table = self.item_table(training=training) if item_table is None else item_table
        x = ops.take(table, ids, axis=0)
        t = ops.shape(ids)[1]
        # Positions count back from the newest behavior (left padding: the last column).
        pos = ops.minimum(ops.arange(t - 1, -1, -1), self.max_len)
        x = x + self.position_embedding(pos)[None]
        if self.behavior_embedding is not None:
            x = x + self.behavior_embedding(inputs["behavior_ids"])
        if self.time_embedding is not None:
            x = x + self.time_embedding(inputs["time_buckets"])
        x = self.drop(self.input_norm(x), training=training)
        att = ops.logical_and(mask[:, None, :], mask[:, :, None])
        if self.attention == "causal":
            causal = ops.greater_equal(ops.arange(t)[:, None], ops.arange(t)[None, :])
            att = ops.logical_and(att, causal[None])
        # Padding queries attend to themselves so that no softmax row is empty.
        att = ops.logical_or(att, ops.eye(t, dtype="bool")[None])
        for block in self.blocks:
            x = block(x, att, training=training)
        x = self.final_norm(x)
        return {"hidden": x, "mask": mask, "item_ids": ids}

    def readout(self, hidden, mask):
        if self.user_vector == "pooled":
            return self.pool(hidden, mask)
        return hidden[:, -1, :]

    def query(self, vectors, k: int = 0):
        """The scoring query for the k-th future behavior (k=0: the next one)."""
        return vectors + self.future_embedding(ops.convert_to_tensor([k]))[0]

    def profile(self, out):
        """The user profile vector from the encoder's output: the item bag (sum of the
        history's profile input embeddings / sqrt(n)) + a projection of the mean hidden state
        (and of the newest one, with profile_newest)."""
        if not self.has_profile:
            raise ValueError("this model has no profile vector (model.user_embedding is 'query')")
        m = ops.cast(out["mask"], "float32")[:, :, None]
        n = ops.maximum(ops.sum(m, axis=1), 1.0)
        items = ops.cast(self.profile_inputs(out["item_ids"]), "float32")
        bag = ops.sum(items * m, axis=1) / ops.sqrt(n)
        hidden = ops.cast(out["hidden"], "float32")
        state = ops.sum(hidden * m, axis=1) / n
        if self.profile_newest:
            state = ops.concatenate([state, hidden[:, -1, :]], axis=-1)
        return bag + ops.cast(self.profile_proj(state), "float32")

    def off_embedding_path(self):
        """Variables that user_embedding() does not read (the scoring tables of the profile,
        the future-position embeddings, an unused pooling layer): frozen while fine-tuning, so
        that they are neither updated nor reported as having no gradient."""
        reads_pool = not self.has_profile and self.user_vector == "pooled"
        out = list(self.pool.weights) if self.pool is not None and not reads_pool else []
        if self.has_profile:
            out += [self.profile_bias, *self.profile_items.weights, *self.future_embedding.weights]
        return out

    def embedding_space(self, training=False):
        """(item table [V, d], item bias [V]) that the exported user embedding is scored
        against: the profile's own table and bias, or item_table() and zeros for the query."""
        if self.has_profile:
            return self.profile_items.embeddings, self.profile_bias.value
        table = self.item_table(training=training)
        return table, ops.zeros((ops.shape(table)[0],), table.dtype)

    def next_item_query(self, inputs, training=False, item_table=None):
        """The vector scored against item_table() for the next behavior (top_k, next-item metrics)."""
        out = self(inputs, training=training, item_table=item_table)
        return self.query(self.readout(out["hidden"], out["mask"]), 0)

    def user_embedding(self, inputs, training=False, item_table=None):
        """The exported user embedding: the profile vector, or the next-item query."""
        if not self.has_profile:
            return self.next_item_query(inputs, training=training, item_table=item_table)
        return self.profile(self(inputs, training=training, item_table=item_table))

    def get_config(self):
        return {"config": self.settings.model_dump(), "pooling": self.pooling, "name": self.name,
                "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "config" not in config:      # saved before the model took its config section whole
            config = _legacy_encoder_config(config)
        return cls(**config)


_LEGACY_SAME = ("num_items", "embedding_dim", "num_blocks", "num_heads", "ff_dim", "dropout", "max_len", "attention",
                "user_vector", "text_max_words", "text_heads", "future_positions", "profile_newest")


def _legacy_encoder_config(c: dict) -> dict:
    """The keyword config models saved before this version carry -> today's (same network)."""
    m = {k: c[k] for k in _LEGACY_SAME if k in c}
    m.update(num_behaviors=c.get("num_behaviors", 0), use_behavior=bool(c.get("num_behaviors", 0)),
             use_time=bool(c.get("time_buckets", 0)), num_words=c.get("num_words", 0),
             use_text=bool(c.get("num_words", 0)), user_embedding=c.get("embedding_vector", "query"))
    if c.get("time_buckets"):
        m["time_buckets"] = c["time_buckets"]
    rest = {k: c[k] for k in ("pooling", "name", "trainable", "dtype") if k in c}
    return {"config": m, **rest}


def build_encoder(model_cfg, title_words: Optional[np.ndarray] = None, pooling: bool = True) -> UserEncoder:
    """`pooling`: build the attentive pooling layer even when the readout does not use it
    (PTUM's pooled MBP head reads it); build_encoder_for(cfg) decides from the objective."""
    return UserEncoder(model_cfg, title_words=title_words, pooling=pooling, name="user_encoder")


def build_encoder_for(cfg, title_words: Optional[np.ndarray] = None) -> UserEncoder:
    """The encoder of a full PTUM config, with pooling only where the readout or MBP uses it."""
    o = cfg.objective
    return build_encoder(cfg.model, title_words, pooling=bool(o.mbp and o.mbp_readout == "pooled"))


@keras.saving.register_keras_serializable(package="ptum")
class UserEmbedder(keras.Model):
    """Behavior batch -> the next-item query [B, d] (what next-item ranking scores)."""

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder

    def call(self, inputs):
        return self.encoder.next_item_query(inputs, training=False)

    def get_config(self):
        return {"encoder": keras.saving.serialize_keras_object(self.encoder), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["encoder"]), name=config.get("name"))
