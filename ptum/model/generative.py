"""Generative retrieval (the TIGER family): a history of items, each read as its code tuple,
-> the next item's code tuple, decoded token by token and constrained to tuples that exist.

Codes: every item token id has a tuple of D codes (`item_codes` [num_items, D], -1 where an
item has none): Semantic IDs (L levels + the collision token, `ptum semantic-ids`), the item id
itself (D = 1: P5's sequential indexing, a classic id model with a decoder) or random tuples
(TIGER's ablation). The item table does not grow with the catalog when D > 1: an item's input
vector is the sum of its codes' embeddings (one table per level).

Network (Keras 3, keras.ops only):
  encoder   a causal transformer over the history, one position per item (positions count
            back from the newest, as in ptum.model.encoder)
  decoder   a causal transformer over [BOS, c_1 .. c_{D-1}] that cross-attends to the encoder's
            states; step l emits a distribution over level l's codes
Training is dense teacher forcing: the decoder for the item at position t+1 attends to the
encoder states up to t, for every t of a batch in one pass (block masks), so a history of n
items is n - 1 examples at the cost of one.

Inference is beam search over a prefix trie of the items' tuples (`Trie`): at each step only
the children of a beam's prefix are candidates, so every result is a real item; an item's
score is the sum of its tokens' log-probabilities (each a log-softmax over its level's codes).
`tuple_log_probs` scores given tuples the same way (the brute force the tests compare with).
Items a list must not hold (the user's history) are left out inside the search: a prefix
counts the items under it (`leaf_counts`) against the excluded ones (`item_nodes`), so a beam
of K returns K items whenever the catalog has them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import keras
import numpy as np
from keras import ops

from ptum.config import GenerativeConfig, ModelConfig
from ptum.data import contracts
from ptum.model.layers import TransformerBlock
from ptum.model.objectives import dataset_mean, dataset_targets_per_row, first_occurrences

DEAD = -1e9   # the score of a beam that has no real continuation


@dataclass
class Trie:
    """The code tuples of the coded items as a prefix tree in flat arrays (node 0: the root).
    Node n's children are nodes child_start[n] .. child_start[n] + child_count[n] - 1, in code
    order; node_code is the code that leads to a node, node_item the item token at a leaf (-1
    elsewhere). max_children[d]: the most children of a depth-d node (the beam's static width)."""

    child_start: np.ndarray
    child_count: np.ndarray
    node_code: np.ndarray
    node_item: np.ndarray
    max_children: List[int]

    @classmethod
    def from_codes(cls, item_codes: np.ndarray) -> "Trie":
        coded = np.flatnonzero((item_codes >= 0).all(axis=1))
        tuples = item_codes[coded].astype(np.int64)
        depth = tuples.shape[1]
        order = np.lexsort(tuples.T[::-1])
        tuples, items = tuples[order], coded[order]
        if len(tuples) > 1 and not (tuples[1:] != tuples[:-1]).any(axis=1).all():
            raise ValueError("two items share a code tuple: codes must be unique (the collision token)")
        total = 1 + sum(int(len(np.unique(tuples[:, :d], axis=0))) for d in range(1, depth + 1))
        child_start, child_count = np.zeros(total, np.int64), np.zeros(total, np.int64)
        node_code, node_item = np.zeros(total, np.int64), np.full(total, -1, np.int64)
        parent = np.zeros(len(tuples), np.int64)     # each row's node one depth up (the root first)
        first_id, max_children = 1, []
        for d in range(1, depth + 1):
            new = np.ones(len(tuples), bool)
            new[1:] = (tuples[1:, :d] != tuples[:-1, :d]).any(axis=1)
            ids = first_id + np.cumsum(new) - 1      # sorted rows: a parent's children are contiguous
            parents, first, count = np.unique(parent[new], return_index=True, return_counts=True)
            child_start[parents], child_count[parents] = first_id + first, count
            max_children.append(int(count.max()) if len(count) else 0)
            node_code[ids[new]] = tuples[new, d - 1]
            if d == depth:
                node_item[ids[new]] = items[new]
            parent, first_id = ids, first_id + int(new.sum())
        return cls(*(a.astype(np.int32) for a in (child_start, child_count, node_code, node_item)), max_children)

    @property
    def size(self) -> int:
        return len(self.child_start)


def level_sizes(item_codes: np.ndarray) -> List[int]:
    """Codes per level (at least 1): max + 1 of each column."""
    coded = item_codes[(item_codes >= 0).all(axis=1)]
    return [int(coded[:, d].max()) + 1 if len(coded) else 1 for d in range(item_codes.shape[1])]


@keras.saving.register_keras_serializable(package="ptum")
class DecoderBlock(keras.layers.Layer):
    """Pre-LN decoder block: causal self-attention, cross-attention to the encoder, FFN."""

    def __init__(self, dim, num_heads, ff_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.ff_dim, self.dropout_rate = dim, num_heads, ff_dim, dropout
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_self")
        self.self_attention = keras.layers.MultiHeadAttention(num_heads, dim // num_heads, dropout=dropout,
                                                              name="self_attention")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_cross")
        self.cross_attention = keras.layers.MultiHeadAttention(num_heads, dim // num_heads, dropout=dropout,
                                                               name="cross_attention")
        self.ln3 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_ffn")
        self.ff1 = keras.layers.Dense(ff_dim, activation="gelu", name="ffn_in")
        self.ff2 = keras.layers.Dense(dim, name="ffn_out")
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        shape = (None, None, self.dim)
        for ln in (self.ln1, self.ln2, self.ln3):
            ln.build(shape)
        self.self_attention.build(shape, shape)
        self.cross_attention.build(shape, shape)
        self.ff1.build(shape)
        self.ff2.build((None, None, self.ff_dim))
        self.built = True

    def call(self, x, memory, self_mask, cross_mask, training=False):
        h = self.ln1(x)
        x = x + self.drop(self.self_attention(h, h, attention_mask=self_mask, training=training), training=training)
        h = self.ln2(x)
        x = x + self.drop(self.cross_attention(h, memory, attention_mask=cross_mask, training=training),
                          training=training)
        h = self.ff2(self.drop(self.ff1(self.ln3(x)), training=training))
        return x + self.drop(h, training=training)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "ff_dim": self.ff_dim,
                "dropout": self.dropout_rate}


@keras.saving.register_keras_serializable(package="ptum")
class GenerativeRetrieval(keras.Model):
    """History -> the next item's code tuple (module docstring). Built with the codes' shapes;
    `set_codes` loads the codes and their trie (they are weights: a saved model carries them)."""

    def __init__(self, config, generative, level_sizes: Sequence[int], trie_size: int,
                 max_children: Sequence[int], targets_per_row: float = 0.0, **kwargs):
        """`targets_per_row` > 0 (objective.loss_average=dataset): the training loss is a batch's
        summed NLL over its rows x this (the training data's mean), not its own targets' mean."""
        super().__init__(**kwargs)
        self.targets_per_row = float(targets_per_row)
        self.settings = m = config if isinstance(config, ModelConfig) else ModelConfig(**config)
        self.generative = g = generative if isinstance(generative, GenerativeConfig) else GenerativeConfig(**generative)
        self.level_sizes, self.trie_size = [int(k) for k in level_sizes], int(trie_size)
        self.max_children = [int(c) for c in max_children]
        self.depth = len(self.level_sizes)
        self.offsets = [int(x) for x in np.cumsum([0] + self.level_sizes[:-1])]
        self.vocab = int(sum(self.level_sizes))
        self.num_items, self.max_len, d = m.num_items, m.max_len, m.embedding_dim
        ff = m.ff_dim or 4 * d
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        # Token 0: "no code" (encoder) / BOS (decoder); level l's code c is 1 + offsets[l] + c.
        self.code_embedding = keras.layers.Embedding(self.vocab + 1, d, embeddings_initializer=init, name="code_embedding")
        self.position_embedding = keras.layers.Embedding(m.max_len + 1, d, embeddings_initializer=init,
                                                         name="position_embedding")
        self.input_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="input_norm")
        self.encoder_blocks = [TransformerBlock(d, m.num_heads, ff, m.dropout, name=f"encoder_{i}")
                               for i in range(m.num_blocks)]
        self.encoder_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")
        self.token_embedding = keras.layers.Embedding(self.vocab + 1, d, embeddings_initializer=init,
                                                      name="decoder_token_embedding")
        self.step_embedding = keras.layers.Embedding(self.depth, d, embeddings_initializer=init, name="decoder_steps")
        self.decoder_blocks = [DecoderBlock(d, m.num_heads, ff, m.dropout, name=f"decoder_{i}")
                               for i in range(g.decoder_blocks)]
        self.decoder_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")
        self.output_layer = keras.layers.Dense(self.vocab, name="code_logits")
        self.drop = keras.layers.Dropout(m.dropout)
        self.item_codes = self.add_weight(shape=(self.num_items, self.depth), dtype="int32", trainable=False,
                                          initializer=keras.initializers.Constant(-1), name="item_codes")
        self.trie = {name: self.add_weight(shape=(self.trie_size,), dtype="int32", trainable=False,
                                           initializer="zeros", name=name)
                     for name in ("child_start", "child_count", "node_code", "node_item")}
        self.build(None)

    def build(self, input_shape=None):
        d = self.settings.embedding_dim
        for emb in (self.code_embedding, self.position_embedding, self.token_embedding, self.step_embedding):
            emb.build((None,))
        for layer in (self.input_norm, self.encoder_norm, self.decoder_norm, self.output_layer,
                      *self.encoder_blocks, *self.decoder_blocks):
            layer.build((None, None, d))
        self.built = True

    def set_codes(self, item_codes: np.ndarray, trie: Optional[Trie] = None) -> Trie:
        """`trie`: Trie.from_codes(item_codes) when the caller built it already."""
        trie = trie or Trie.from_codes(item_codes)
        self.item_codes.assign(np.asarray(item_codes, np.int32))
        for name in self.trie:
            self.trie[name].assign(getattr(trie, name))
        return trie

    # ------------------------------------------------------------------ encoder
    def _tokens(self, codes):
        """Codes of levels 0 .. n-1 [..., n] (-1: none) -> embedding ids (0 where there is no code)."""
        offsets = ops.convert_to_tensor(np.array(self.offsets[: codes.shape[-1]], np.int32))
        return ops.where(codes >= 0, codes + offsets + 1, 0)

    def encode(self, item_ids, training=False):
        """History [B, T] (left-padded item tokens) -> (states [B, T, d], valid [B, T])."""
        valid = ops.not_equal(item_ids, contracts.PAD_ID)
        codes = ops.take(self.item_codes.value, ops.cast(item_ids, "int32"), axis=0)
        x = ops.sum(self.code_embedding(self._tokens(codes)), axis=2)
        t = ops.shape(item_ids)[1]
        x = x + self.position_embedding(ops.minimum(ops.arange(t - 1, -1, -1), self.max_len))[None]
        x = self.drop(self.input_norm(x), training=training)
        causal = ops.greater_equal(ops.arange(t)[:, None], ops.arange(t)[None, :])
        att = ops.logical_and(ops.logical_and(valid[:, None, :], valid[:, :, None]), causal[None])
        att = ops.logical_or(att, ops.eye(t, dtype="bool")[None])
        for block in self.encoder_blocks:
            x = block(x, att, training=training)
        return self.encoder_norm(x), valid

    # ------------------------------------------------------------------ decoder
    def _decode(self, tokens, steps, memory, self_mask, cross_mask, training=False):
        """Decoder tokens [B, S] at decoding steps `steps` [S] -> logits [B, S, vocab]."""
        x = self.drop(self.token_embedding(tokens) + self.step_embedding(steps)[None], training=training)
        for block in self.decoder_blocks:
            x = block(x, memory, self_mask, cross_mask, training=training)
        return self.output_layer(self.decoder_norm(x))

    def _level_log_softmax(self, logits, level: int):
        lo = self.offsets[level]
        return ops.log_softmax(ops.cast(logits[..., lo:lo + self.level_sizes[level]], "float32"), axis=-1)

    def call(self, inputs, training=False):
        """Teacher-forced loss over every next item of a batch of windows {"item_ids": [B, W]}."""
        ids = ops.cast(inputs["item_ids"], "int32")
        history, targets = ids[:, :-1], ids[:, 1:]
        memory, hist_valid = self.encode(history, training=training)
        p, depth = ops.shape(history)[1], self.depth
        codes = ops.take(self.item_codes.value, targets, axis=0)                       # [B, P, D]
        target_ok = ops.logical_and(ops.logical_and(ops.not_equal(targets, contracts.PAD_ID), hist_valid),
                                    ops.all(codes >= 0, axis=-1))
        dec_in = ops.concatenate([ops.zeros_like(codes[..., :1]), self._tokens(codes[..., :-1])], axis=-1)
        b = ops.shape(ids)[0]
        block = ops.repeat(ops.arange(p), depth)                                     # [P*D] target position
        step = ops.tile(ops.arange(depth), [p])                                       # [P*D] decoding step
        self_mask = ops.logical_and(ops.equal(block[:, None], block[None, :]), step[None, :] <= step[:, None])
        cross_mask = ops.logical_and(ops.arange(p)[None, :] <= block[:, None], hist_valid[:, None, :])
        cross_mask = ops.logical_or(cross_mask, ops.equal(ops.arange(p)[None, :], block[:, None])[None])
        logits = self._decode(ops.reshape(dec_in, (b, p * depth)), step, memory,
                              ops.broadcast_to(self_mask[None], (b, p * depth, p * depth)), cross_mask,
                              training=training)
        logits = ops.reshape(logits, (b, p, depth, self.vocab))
        nll = 0.0
        for level in range(depth):
            logp = self._level_log_softmax(logits[:, :, level], level)
            target = ops.maximum(codes[..., level], 0)
            nll = nll - ops.squeeze(ops.take_along_axis(logp, target[..., None], axis=-1), -1)
        weight = ops.cast(target_ok, "float32")
        if self.targets_per_row > 0:      # every target weighs the same, whatever its batch
            return {"generative": dataset_mean(ops.sum(nll * weight), ids, self.targets_per_row)}
        return {"generative": ops.sum(nll * weight) / ops.maximum(ops.sum(weight), 1.0)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        from ptum.model.objectives import _per_replica
        return _per_replica(y_pred["generative"])

    def _step_log_probs(self, memory, valid, tokens, level: int):
        """Log-probabilities of level `level`'s codes after decoder tokens [B, level + 1]."""
        s = ops.shape(tokens)[1]
        steps = ops.arange(s)
        self_mask = ops.broadcast_to((steps[None, :] <= steps[:, None])[None], (ops.shape(tokens)[0], s, s))
        cross = ops.broadcast_to(valid[:, None, :], (ops.shape(tokens)[0], s, ops.shape(valid)[1]))
        logits = self._decode(tokens, steps, memory, self_mask, cross)
        return self._level_log_softmax(logits[:, -1], level)

    # ------------------------------------------------------------------ inference
    def catalog_twins(self, first_new: int, beam_size: int) -> np.ndarray:
        """prefix_groups of the catalog items without events (tokens first_new ..) by
        generative.catalog_items_prefix (-1: every level but the collision token; 0: none)."""
        codes = np.asarray(ops.convert_to_numpy(self.item_codes.value))
        m = self.generative.catalog_items_prefix
        m = self.depth - 1 if m < 0 else min(m, self.depth)
        if m < 1:
            return np.zeros((len(codes), 0), np.int32)
        return prefix_groups(codes, range(first_new, len(codes)), m,
                             catalog_cap(beam_size, self.generative.catalog_items_epsilon))

    def leaf_counts(self):
        """[trie_size] int32: the items under each node of the trie (1 at a leaf), bottom-up
        from the trie's arrays (a node's children are contiguous: a cumulative sum per pass)."""
        t = self.trie
        start, count = t["child_start"].value, t["child_count"].value
        counts = ops.cast(t["node_item"].value >= 0, "int32")
        for _ in range(self.depth):
            total = ops.concatenate([ops.zeros((1,), "int32"), ops.cumsum(counts)])
            counts = ops.where(count > 0, ops.take(total, start + count) - ops.take(total, start), counts)
        return counts

    def item_nodes(self, items):
        """Item tokens [B, E] -> each one's trie node at depths 1 .. D [B, E, D] (-1 for every
        depth of a reserved token, an item without a code or one not in the trie)."""
        items = ops.cast(items, "int32")
        t = self.trie
        real = ops.logical_and(items >= contracts.FIRST_ITEM_ID, items < self.num_items)
        codes = ops.take(self.item_codes.value, ops.clip(items, 0, self.num_items - 1), axis=0)   # [B, E, D]
        ok = ops.logical_and(real, ops.all(codes >= 0, axis=-1))
        node = ops.zeros_like(items)
        out = []
        for level in range(self.depth):
            j = ops.arange(max(self.max_children[level], 1), dtype="int32")
            child = ops.minimum(ops.take(t["child_start"].value, node)[..., None] + j, self.trie_size - 1)
            hit = ops.logical_and(j < ops.take(t["child_count"].value, node)[..., None],
                                  ops.equal(ops.take(t["node_code"].value, child), codes[..., level, None]))
            ok = ops.logical_and(ok, ops.any(hit, axis=-1))
            node = ops.sum(ops.where(hit, child, 0), axis=-1)
            out.append(ops.where(ok, node, -1))
        return ops.stack(out, axis=-1)

    def beam_search(self, item_ids, beam_size: int, exclude=None):
        """History [B, T] -> (item tokens [B, K], scores [B, K]) best first, K = min(beam_size,
        coded items): beam search over the trie. A slot with no item left has item -1, score DEAD.
        `exclude` [B, E] (item tokens; PAD and other reserved tokens ignored, repeats counted
        once): items the lists must not hold, left out inside the search: a prefix whose items
        are all excluded is no candidate, so a beam of K still returns K items when the catalog
        has K besides them (filtering after the search would return fewer)."""
        memory, valid = self.encode(ops.cast(item_ids, "int32"))
        b = ops.shape(memory)[0]
        t = self.trie
        if exclude is not None:
            paths = self.item_nodes(first_occurrences(ops.cast(exclude, "int32")))    # [B, E, D]
            leaves = self.leaf_counts()
        nodes = ops.zeros((b, 1), "int32")
        scores = ops.zeros((b, 1), "float32")
        tokens = ops.zeros((b, 1, 1), "int32")          # BOS
        width = 1
        for level in range(self.depth):
            flat_tokens = ops.reshape(tokens, (b * width, level + 1))
            logp = self._step_log_probs(ops.repeat(memory, width, axis=0), ops.repeat(valid, width, axis=0),
                                        flat_tokens, level)
            logp = ops.reshape(logp, (b, width, self.level_sizes[level]))
            c = max(self.max_children[level], 1)
            start = ops.take(t["child_start"].value, nodes, axis=0)
            count = ops.take(t["child_count"].value, nodes, axis=0)
            j = ops.arange(c, dtype="int32")
            child = ops.minimum(start[..., None] + j, self.trie_size - 1)           # [B, W, C]
            ok = ops.logical_and(j < count[..., None], (scores > DEAD / 2)[..., None])
            if exclude is not None:    # a child keeps a candidate only while it has an item not excluded
                ok = ops.logical_and(ok, ops.take(leaves, child) > self._excluded_below(paths, nodes, level, c))
            code = ops.take(t["node_code"].value, child, axis=0)
            cand = ops.where(ok, scores[..., None] + ops.take_along_axis(logp, code, axis=-1), DEAD)
            new_width = min(beam_size, width * c)
            scores, pick = ops.top_k(ops.reshape(cand, (b, width * c)), k=new_width)
            parent = pick // c
            nodes = ops.take_along_axis(ops.reshape(child, (b, width * c)), pick, axis=1)
            next_code = ops.take(t["node_code"].value, nodes, axis=0)
            tokens = ops.concatenate([ops.take_along_axis(tokens, ops.repeat(parent[..., None], level + 1, axis=2),
                                                          axis=1),
                                      (next_code + self.offsets[level] + 1)[..., None]], axis=2)
            width = new_width
        alive = scores > DEAD / 2
        return ops.where(alive, ops.take(t["node_item"].value, nodes, axis=0), -1), ops.where(alive, scores, DEAD)

    def _excluded_below(self, paths, nodes, level: int, c: int):
        """[B, W, C] int32: how many excluded items lie under child j of beam w's node (depth
        `level`), from their paths [B, E, D]: an item is under the child its depth-(level+1)
        node is, when its depth-`level` node is the beam's (the root at level 0)."""
        here = paths[..., level]                                                 # [B, E]
        above = paths[..., level - 1] if level else ops.where(here >= 0, 0, -1)
        under = ops.logical_and(ops.equal(above[:, None, :], nodes[:, :, None]), (here >= 0)[:, None, :])
        j = here - ops.take(self.trie["child_start"].value, ops.maximum(above, 0))
        slot = ops.one_hot(ops.where(here >= 0, j, -1), c, dtype="float32")    # [B, E, C]; -1: all zero
        return ops.cast(ops.round(ops.matmul(ops.cast(under, "float32"), slot)), "int32")

    def tuple_log_probs(self, item_ids, tuples):
        """Log-probability of each code tuple [N, D] after each history [B, T] -> [B, N]
        (teacher forcing over every tuple: the exhaustive scoring beam search approximates)."""
        memory, valid = self.encode(ops.cast(item_ids, "int32"))
        b, n = ops.shape(memory)[0], ops.shape(tuples)[0]
        tuples = ops.cast(tuples, "int32")
        dec_in = ops.concatenate([ops.zeros((n, 1), "int32"), self._tokens(tuples[:, :-1])], axis=1)
        mem = ops.repeat(memory, n, axis=0)
        val = ops.repeat(valid, n, axis=0)
        steps = ops.arange(self.depth)
        self_mask = ops.broadcast_to((steps[None, :] <= steps[:, None])[None], (b * n, self.depth, self.depth))
        cross = ops.broadcast_to(val[:, None, :], (b * n, self.depth, ops.shape(val)[1]))
        logits = self._decode(ops.tile(dec_in, [b, 1]), steps, mem, self_mask, cross)
        total = 0.0
        for level in range(self.depth):
            logp = self._level_log_softmax(logits[:, level], level)
            target = ops.tile(tuples[:, level], [b])
            total = total + ops.squeeze(ops.take_along_axis(logp, target[:, None], axis=-1), -1)
        return ops.reshape(total, (b, n))

    def get_config(self):
        return {"config": self.settings.model_dump(), "generative": self.generative.model_dump(),
                "level_sizes": self.level_sizes, "trie_size": self.trie_size, "max_children": self.max_children,
                "targets_per_row": self.targets_per_row, "name": self.name}


def catalog_cap(k: int, epsilon: float) -> int:
    """How many never-seen items a top-k may hold: max(1, floor(epsilon * k))."""
    return max(1, int(math.floor(epsilon * k + 1e-9)))


def prefix_groups(item_codes: np.ndarray, new_tokens: Sequence[int], m: int, max_members: int) -> np.ndarray:
    """[num_items, M] int32 (-1 pads): for each item that is not new, the new items whose first `m`
    codes equal its own, in token order, at most `max_members` each (a top-k shows no more of
    them: TIGER's epsilon cap). M = 0 when no item has such a new twin."""
    codes = np.asarray(item_codes, np.int64)
    new = np.asarray(sorted(set(int(t) for t in new_tokens)), np.int64)
    new = new[(codes[new] >= 0).all(axis=1)] if len(new) else new
    groups: dict = {}
    for t in new:
        members = groups.setdefault(tuple(codes[t, :m].tolist()), [])
        if len(members) < max_members:
            members.append(int(t))
    is_new = np.zeros(len(codes), bool)
    is_new[new] = True
    rows = {i: groups[key] for i in np.flatnonzero((codes >= 0).all(axis=1) & ~is_new)
            if (key := tuple(codes[i, :m].tolist())) in groups}
    width = max((len(v) for v in rows.values()), default=0)
    out = np.full((len(codes), width), -1, np.int32)
    for i, members in rows.items():
        out[i, :len(members)] = members
    return out


def merge_prefix_matches(items, scores, groups):
    """TIGER's cold-start retrieval over a beam's list: each decoded item's new twins (`groups`,
    prefix_groups) join the list with its score, just below it (the j-th twin 1e-6 * (j + 1)
    lower); an item reached twice keeps its best score. items/scores [B, K] (item -1: no
    item) -> [B, K * (1 + M)], best first, -1 / DEAD after the last item. keras.ops: evaluation
    and the SavedModel run this one function."""
    m = int(groups.shape[1])
    if m == 0:
        return items, scores
    items, scores = ops.cast(items, "int32"), ops.cast(scores, "float32")
    b, k = ops.shape(items)[0], ops.shape(items)[1]
    real = items >= contracts.FIRST_ITEM_ID
    twins = ops.take(ops.convert_to_tensor(groups, "int32"), ops.maximum(items, 0), axis=0)       # [B, K, M]
    twins = ops.where(real[..., None], twins, -1)
    inherited = scores[..., None] - 1e-6 * ops.cast(ops.arange(1, m + 1), "float32")[None, None, :]
    cand = ops.concatenate([items, ops.reshape(twins, (b, k * m))], axis=1)
    cand_scores = ops.concatenate([scores, ops.reshape(inherited, (b, k * m))], axis=1)
    n = k * (1 + m)
    order = ops.arange(n)
    better = ops.logical_or(cand_scores[:, None, :] > cand_scores[:, :, None],
                            ops.logical_and(ops.equal(cand_scores[:, None, :], cand_scores[:, :, None]),
                                            (order[None, :] < order[:, None])[None]))
    duplicate = ops.any(ops.logical_and(ops.equal(cand[:, None, :], cand[:, :, None]), better), axis=-1)
    alive = ops.logical_and(cand >= contracts.FIRST_ITEM_ID, ops.logical_not(duplicate))
    cand_scores = ops.where(alive, cand_scores, DEAD)
    top, pick = ops.top_k(cand_scores, k=n)
    return ops.where(top > DEAD / 2, ops.take_along_axis(cand, pick, axis=1), -1), top


def build_generative(cfg, item_codes: np.ndarray, targets_per_row: float = 0.0) -> GenerativeRetrieval:
    """A model for `cfg` (model + generative sections, vocabulary filled) over `item_codes`;
    `targets_per_row`: the training rows' mean targets, for objective.loss_average=dataset."""
    trie = Trie.from_codes(item_codes)
    model = GenerativeRetrieval(cfg.model, cfg.generative, level_sizes(item_codes), trie.size, trie.max_children,
                                dataset_targets_per_row(cfg, targets_per_row), name="generative_retrieval")
    model.set_codes(item_codes, trie)
    return model
