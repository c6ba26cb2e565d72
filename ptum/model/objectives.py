"""The PTUM pre-training tasks on top of the encoder (`PTUMPretrainer`): masked behavior
prediction (MBP), next-K behavior prediction (NBP) and the item-bag objective, all scored by
one `CandidateScoring` (sampled or full softmax). Loss = L_MBP + lambda * L_NBP (+ bag).

keras.ops only, so the same code trains under KERAS_BACKEND=tensorflow and jax.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ptum.config import ObjectiveConfig
from ptum.data import contracts
from ptum.model.encoder import NEG_INF, UserEncoder


def scored_cross_entropy(logits, target_col=0, smoothing=0.0):
    """Softmax cross-entropy where the positive sits in column `target_col`; with `smoothing`
    e > 0 the target is (1 - e) on the positive and e spread evenly over the columns that are
    candidates (NEG_INF columns are none)."""
    logits = ops.cast(logits, "float32")
    logp = ops.log_softmax(logits, axis=-1)
    ce = -ops.take(logp, target_col, axis=-1)
    if not smoothing:
        return ce
    ok = logits > NEG_INF / 2
    uniform = -ops.sum(ops.where(ok, logp, 0.0), axis=-1) / ops.maximum(ops.sum(ops.cast(ok, "float32"), axis=-1), 1.0)
    return (1.0 - smoothing) * ce + smoothing * uniform


def first_occurrences(ids):
    """[B, T] item ids with each repeat (an item seen at an earlier position) set to PAD_ID:
    any prefix of a row then lists each of its items once."""
    t = ops.shape(ids)[1]
    earlier = ops.arange(t)[None, :] < ops.arange(t)[:, None]              # [T, T]: column before row
    repeat = ops.any(ops.logical_and(ops.equal(ids[:, :, None], ids[:, None, :]), earlier[None]), axis=-1)
    return ops.where(repeat, contracts.PAD_ID, ids)


def dataset_mean(total, ids, targets_per_row: float):
    """objective.loss_average=dataset: a batch's summed loss over its real rows (not all PAD:
    the padding rows a distributed batch gets count for nothing) x the data's mean targets per
    row, so every target weighs the same in every batch; 0 for a batch of padding only."""
    rows = ops.sum(ops.cast(ops.any(ops.not_equal(ids, contracts.PAD_ID), axis=1), "float32"))
    return total / ops.maximum(rows * targets_per_row, 1e-6)


def dataset_targets_per_row(cfg, targets_per_row: float) -> float:
    """What a model divides by (build_pretrainer, build_generative): the training data's mean
    targets per row under objective.loss_average=dataset, 0 (the batch mean) otherwise."""
    if cfg.objective.loss_average != "dataset":
        return 0.0
    if targets_per_row <= 0:
        raise ValueError("objective.loss_average=dataset needs the training data's targets per row")
    return float(targets_per_row)


def _among(ids, history):
    """[N, S] bool: ids[n, s] is one of history[n] (PAD_ID entries match nothing real)."""
    return ops.any(ops.equal(ops.cast(ids, "int32")[:, :, None], ops.cast(history, "int32")[:, None, :]), axis=-1)


@keras.saving.register_keras_serializable(package="ptum")
class CandidateScoring(keras.layers.Layer):
    """Scores queries against their target item and negatives; returns the mean softmax
    cross-entropy over valid targets. One place for PTUM's sampled candidates, shared
    sampled softmax (uniform, logQ-corrected, accidental hits masked) and full softmax.
    `label_smoothing` e: the target puts e evenly on every candidate of its row (the positive
    included, the items left out of the row excluded)."""

    def __init__(self, negatives="shared", num_negatives=256, logq_correction=True, temperature=1.0,
                 seed=0, label_smoothing=0.0, **kwargs):
        super().__init__(**kwargs)
        self.negatives, self.num_negatives = negatives, num_negatives
        self.logq_correction, self.temperature = logq_correction, temperature
        self.seed, self.label_smoothing = seed, float(label_smoothing)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, queries, targets, valid, table, history=None):
        """queries [N, d], targets [N] int, valid [N] bool, table [V, d] -> scalar loss.
        `history` [N, H] int, each item once (first_occurrences), PAD_ID where none: items that
        are no negative of their row (the items a prefix already holds: its target, if among
        them, stays the positive)."""
        num_items = ops.shape(table)[0]
        q = ops.cast(queries, "float32") / self.temperature
        table = ops.cast(table, "float32")
        pos = ops.sum(q * ops.take(table, targets, axis=0), axis=-1, keepdims=True)
        if self.negatives == "full":
            logits = ops.matmul(q, ops.transpose(table))
            reserved = ops.arange(num_items) < contracts.FIRST_ITEM_ID
            logits = ops.where(reserved[None, :], NEG_INF, logits)
            is_target = ops.equal(ops.arange(num_items)[None, :], targets[:, None])
            logits = ops.where(is_target, NEG_INF, logits)
            if history is not None:
                return self._mean(self._full_without(pos, logits, history, self.label_smoothing), valid)
            logits = ops.concatenate([pos, logits], axis=-1)
        elif self.negatives == "shared":
            neg = keras.random.randint((self.num_negatives,), contracts.FIRST_ITEM_ID, num_items,
                                       seed=self.seed_generator)
            logits = ops.matmul(q, ops.transpose(ops.take(table, neg, axis=0)))
            if self.logq_correction:
                # Uniform proposal: q(j) = S / (V - reserved) for each sampled negative.
                n_real = ops.cast(num_items - contracts.FIRST_ITEM_ID, "float32")
                logits = logits - ops.log(self.num_negatives / n_real)
            logits = ops.where(ops.equal(neg[None, :], targets[:, None]), NEG_INF, logits)
            if history is not None:
                logits = ops.where(_among(ops.broadcast_to(neg[None, :], ops.shape(logits)), history), NEG_INF, logits)
            logits = ops.concatenate([pos, logits], axis=-1)
        else:  # PTUM: per-target sampled candidates
            n = ops.shape(targets)[0]
            neg = keras.random.randint((n, self.num_negatives), contracts.FIRST_ITEM_ID, num_items,
                                       seed=self.seed_generator)
            neg_vec = ops.take(table, neg, axis=0)
            logits = ops.sum(q[:, None, :] * neg_vec, axis=-1)
            logits = ops.where(ops.equal(neg, targets[:, None]), NEG_INF, logits)
            if history is not None:
                logits = ops.where(_among(neg, history), NEG_INF, logits)
            logits = ops.concatenate([pos, logits], axis=-1)
        return self._mean(scored_cross_entropy(logits, smoothing=self.label_smoothing), valid)

    @staticmethod
    def _mean(ce, valid):
        w = ops.cast(valid, "float32")
        return ops.sum(ce * w) / ops.maximum(ops.sum(w), 1.0)

    @staticmethod
    def _full_without(pos, logits, history, smoothing=0.0):
        """Full-softmax cross-entropy with the history's items taken out of the normaliser:
        log(Z - sum of their exp) from their gathered logits (a [N, V, H] mask would not fit);
        the target and reserved ids are already NEG_INF in `logits`. With `smoothing`, the
        uniform part's mean logit over the kept items is (all real - history) sums the same way."""
        lse = ops.logsumexp(ops.concatenate([pos, logits], axis=-1), axis=-1, keepdims=True)
        seen = ops.take_along_axis(logits, ops.cast(history, "int32"), axis=1)
        gone = ops.sum(ops.exp(seen - lse), axis=-1, keepdims=True)
        left = ops.maximum(1.0 - gone, ops.exp(pos - lse))      # the positive always remains
        norm = lse + ops.log(left)
        ce = ops.squeeze(norm - pos, -1)
        if not smoothing:
            return ce
        real, hist = logits > NEG_INF / 2, seen > NEG_INF / 2
        total = ops.sum(ops.where(real, logits, 0.0), axis=-1) - ops.sum(ops.where(hist, seen, 0.0), axis=-1)
        count = ops.sum(ops.cast(real, "float32"), axis=-1) - ops.sum(ops.cast(hist, "float32"), axis=-1)
        mean_logit = (total + ops.squeeze(pos, -1)) / (count + 1.0)
        return (1.0 - smoothing) * ce + smoothing * (ops.squeeze(norm, -1) - mean_logit)

    def get_config(self):
        return {**super().get_config(), "negatives": self.negatives, "num_negatives": self.num_negatives,
                "logq_correction": self.logq_correction, "temperature": self.temperature, "seed": self.seed,
                "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="ptum")
class MaskedBehaviorPrediction(keras.layers.Layer):
    """MBP: hide behaviors (MASK_ID), predict them from the pooled user vector (PTUM) or
    from the hidden state at each masked position."""

    def __init__(self, mask_rate=0.2, readout="position", seed=0, **kwargs):
        super().__init__(**kwargs)
        self.mask_rate, self.readout, self.seed = mask_rate, readout, seed
        self.seed_generator = keras.random.SeedGenerator(seed + 1)

    def call(self, inputs, encoder=None, scoring=None, training=False):
        ids = inputs["item_ids"]
        valid = ops.not_equal(ids, contracts.PAD_ID)
        u = keras.random.uniform(ops.shape(ids), seed=self.seed_generator)
        masked = ops.logical_and(valid, u < self.mask_rate)
        # At least one masked behavior per sequence (PTUM masks exactly one): the newest
        # position with the highest draw among valid ones.
        draw = ops.where(valid, u, 2.0)
        first = ops.equal(draw, ops.min(draw, axis=1, keepdims=True))
        masked = ops.logical_or(masked, ops.logical_and(first, valid))
        masked_ids = ops.where(masked, contracts.MASK_ID, ids)
        out = encoder({**inputs, "item_ids": masked_ids}, training=training)
        table = encoder.item_table(training=training)
        d = ops.shape(out["hidden"])[-1]
        if self.readout == "position":
            queries = ops.reshape(out["hidden"], (-1, d))
        else:
            pooled = encoder.pool(out["hidden"], ops.not_equal(masked_ids, contracts.PAD_ID))
            t = ops.shape(ids)[1]
            queries = ops.reshape(ops.repeat(pooled[:, None, :], t, axis=1), (-1, d))
        targets = ops.reshape(ids, (-1,))
        ok = ops.logical_and(ops.reshape(masked, (-1,)), ops.not_equal(targets, contracts.OOV_ID))
        return scoring(queries, targets, ok, table)

    def get_config(self):
        return {**super().get_config(), "mask_rate": self.mask_rate, "readout": self.readout, "seed": self.seed}


@keras.saving.register_keras_serializable(package="ptum")
class NextBehaviorsPrediction(keras.layers.Layer):
    """NBP: predict each of the next K behaviors, with one future-position embedding per k,
    from the last position only (PTUM: the last K behaviors are cut off the input) or
    from every prefix (dense next-K; needs causal attention)."""

    def __init__(self, k=1, nbp_from="every", exclude_history=False, targets_per_row=0.0, **kwargs):
        """`targets_per_row` > 0 (objective.loss_average=dataset, from every prefix): a batch's
        summed loss is divided by its rows x this (the training data's mean), not by its own
        count of targets, so that every target weighs the same in every batch."""
        super().__init__(**kwargs)
        self.k, self.nbp_from, self.exclude_history = k, nbp_from, exclude_history
        self.targets_per_row = float(targets_per_row)

    def call(self, inputs, encoder=None, scoring=None, training=False):
        ids = inputs["item_ids"]
        t = ops.shape(ids)[1]
        table = encoder.item_table(training=training)
        losses = []
        if self.nbp_from == "every":
            cut = {name: v[:, :-1] for name, v in inputs.items()}
            out = encoder(cut, training=training)
            d = ops.shape(out["hidden"])[-1]
            for k in range(self.k):
                # Query at position i predicts behavior i + 1 + k.
                h = out["hidden"][:, : t - 1 - k, :]
                tgt = ids[:, 1 + k:]
                src_ok = out["mask"][:, : t - 1 - k]
                q = ops.reshape(encoder.query(h, k), (-1, d))
                tgt = ops.reshape(tgt, (-1,))
                ok = ops.logical_and(ops.reshape(src_ok, (-1,)), ops.not_equal(tgt, contracts.PAD_ID))
                ok = ops.logical_and(ok, ops.not_equal(tgt, contracts.OOV_ID))
                hist = None
                if self.exclude_history:      # position i's history: the items at positions <= i
                    upto = ops.arange(t - 1)[None, :] <= ops.arange(t - 1 - k)[:, None]
                    hist = ops.where(upto[None], first_occurrences(cut["item_ids"])[:, None, :], contracts.PAD_ID)
                    hist = ops.reshape(hist, (-1, t - 1))
                loss = scoring(q, tgt, ok, table, hist)
                if self.targets_per_row > 0:     # the batch's mean -> its sum / (real rows x the data's mean)
                    loss = dataset_mean(loss * ops.sum(ops.cast(ok, "float32")), ids, self.targets_per_row)
                losses.append(loss)
        else:
            cut = {name: v[:, : t - self.k] for name, v in inputs.items()}
            out = encoder(cut, training=training)
            vec = encoder.readout(out["hidden"], out["mask"])
            has_history = ops.any(out["mask"], axis=1)
            for k in range(self.k):
                tgt = ids[:, t - self.k + k]
                ok = ops.logical_and(has_history, ops.not_equal(tgt, contracts.PAD_ID))
                ok = ops.logical_and(ok, ops.not_equal(tgt, contracts.OOV_ID))
                hist = first_occurrences(cut["item_ids"]) if self.exclude_history else None
                losses.append(scoring(encoder.query(vec, k), tgt, ok, table, hist))
        return ops.mean(ops.stack(losses))

    def get_config(self):
        return {**super().get_config(), "k": self.k, "nbp_from": self.nbp_from,
                "exclude_history": self.exclude_history, "targets_per_row": self.targets_per_row}


@keras.saving.register_keras_serializable(package="ptum")
class BagPrediction(keras.layers.Layer):
    """Set-level objective (Mult-DAE style): drop a share of the behaviors (as padding),
    encode what is left, and predict the user's whole item bag from the profile vector as
    a multinomial over the catalog (full softmax over the profile's own item table + bias).
    It makes the profile describe the user's tastes rather than the next behavior only.

    With `future` = W > 0 (dense future window, PinnerFormer-style): each user's newest s
    behaviors (s uniform in 1..W) are cut off the input as well, and a second multinomial
    term asks the profile of what is left for exactly those s future behaviors.

    With `contrastive` = c > 0 (a user-level contrastive term): a second, independently
    dropped view of each history is encoded too, and the two profiles of a user must pick
    each other out of the batch (InfoNCE over cosine similarities / `temperature`, in-batch
    negatives, both directions), added with weight c.

    With `target_weight` "idf", each of the user's items weighs its idf (`item_idf`, [num_items],
    from the training rows; kept as a non-trainable weight, so a checkpoint carries it) in the
    multinomial target instead of 1: the profile is asked most about the items few users have,
    as TF-IDF weighs a bag."""

    def __init__(self, dropout=0.5, seed=0, future=0, contrastive=0.0, temperature=0.1, target_weight="uniform",
                 num_items=0, item_idf=None, **kwargs):
        super().__init__(**kwargs)
        self.dropout, self.seed, self.future = dropout, seed, future
        self.contrastive, self.temperature = float(contrastive), float(temperature)
        self.seed_generator = keras.random.SeedGenerator(seed + 2)
        self.target_weight, self.num_items = target_weight, int(num_items)
        self.item_idf = None
        if target_weight == "idf":
            self.item_idf = self.add_weight(shape=(self.num_items,), initializer="ones", trainable=False,
                                            name="item_idf")
            if item_idf is not None:
                self.item_idf.assign(np.asarray(item_idf, np.float32))

    def _cut_future(self, inputs, valid):
        """Shift each row right by s (1..min(W, n - 1)) so that its newest s behaviors leave the
        input; returns (shifted inputs, mask [B, T] of the cut-off future positions)."""
        t = ops.shape(valid)[1]
        n = ops.sum(ops.cast(valid, "int32"), axis=1)
        most = ops.clip(n - 1, 0, self.future)
        u = keras.random.uniform(ops.shape(n), seed=self.seed_generator)
        s = ops.where(most > 0, ops.cast(ops.floor(u * ops.cast(most, "float32")), "int32") + 1, 0)
        col = ops.arange(t)[None, :]
        src = col - s[:, None]
        inside = src >= 0
        src = ops.maximum(src, 0)
        shifted = {name: ops.where(inside, ops.take_along_axis(x, src, axis=1), ops.zeros_like(x))
                   for name, x in inputs.items()}
        future = ops.logical_and(valid, col >= t - s[:, None])
        return shifted, future

    def _nll(self, logp, ids, weight):
        """Mean over users (with any weight) of the mean -log p of their weighted items."""
        picked = ops.take_along_axis(logp, ops.cast(ids, "int32"), axis=1)
        n = ops.sum(weight, axis=1)
        per_user = -ops.sum(picked * weight, axis=1) / ops.maximum(n, 1.0)
        has = ops.cast(n > 0, "float32")
        return ops.sum(per_user * has) / ops.maximum(ops.sum(has), 1.0)

    def call(self, inputs, encoder=None, training=False):
        ids = inputs["item_ids"]
        valid = ops.not_equal(ids, contracts.PAD_ID)
        known = ops.cast(ops.logical_and(valid, ops.not_equal(ids, contracts.OOV_ID)), "float32")
        if self.item_idf is not None:
            known = known * ops.take(self.item_idf.value, ops.cast(ids, "int32"), axis=0)
        seen, future = inputs, None
        if training and self.future > 0:
            seen, future = self._cut_future(inputs, valid)
        kept = self._drop(seen["item_ids"]) if training else seen["item_ids"]
        p = ops.cast(encoder.profile(encoder({**seen, "item_ids": kept}, training=training)), "float32")
        table, bias = encoder.embedding_space(training=training)
        logits = ops.matmul(p, ops.transpose(ops.cast(table, "float32"))) + ops.cast(bias, "float32")[None, :]
        reserved = ops.arange(ops.shape(table)[0]) < contracts.FIRST_ITEM_ID
        logp = ops.log_softmax(ops.where(reserved[None, :], NEG_INF, logits), axis=-1)
        loss = self._nll(logp, ids, known)
        if future is not None:
            loss = loss + self._nll(logp, ids, known * ops.cast(future, "float32"))
        if training and self.contrastive > 0:
            other = self._drop(seen["item_ids"])
            p2 = ops.cast(encoder.profile(encoder({**seen, "item_ids": other}, training=training)), "float32")
            loss = loss + self.contrastive * self._info_nce(p, p2, ops.any(valid, axis=1))
        return loss

    def _drop(self, kept):
        """Hide a `dropout` share of the behaviors (as padding); the newest always stays."""
        if self.dropout <= 0:
            return kept
        u = keras.random.uniform(ops.shape(kept), seed=self.seed_generator)
        newest = ops.equal(ops.arange(ops.shape(kept)[1]), ops.shape(kept)[1] - 1)[None, :]
        drop = ops.logical_and(ops.logical_and(ops.not_equal(kept, contracts.PAD_ID), u < self.dropout),
                               ops.logical_not(newest))
        return ops.where(drop, contracts.PAD_ID, kept)

    def _info_nce(self, a, b, rows):
        """Symmetric InfoNCE: row i of `a` and of `b` are one user's two views; `rows` [B]
        marks real users (padding rows, added to split a batch evenly over devices, are
        neither positives nor negatives)."""
        a = a / ops.maximum(ops.sqrt(ops.sum(a * a, axis=-1, keepdims=True)), 1e-6)
        b = b / ops.maximum(ops.sqrt(ops.sum(b * b, axis=-1, keepdims=True)), 1e-6)
        logits = ops.matmul(a, ops.transpose(b)) / self.temperature
        logits = ops.where(ops.logical_and(rows[:, None], rows[None, :]), logits, NEG_INF)
        diag = ops.arange(ops.shape(a)[0])
        ce_ab = -ops.take_along_axis(ops.log_softmax(logits, axis=1), diag[:, None], axis=1)[:, 0]
        ce_ba = -ops.take_along_axis(ops.log_softmax(logits, axis=0), diag[None, :], axis=0)[0]
        w = ops.cast(rows, "float32")
        n = ops.maximum(ops.sum(w), 1.0)
        return 0.5 * (ops.sum(ce_ab * w) + ops.sum(ce_ba * w)) / n

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout, "seed": self.seed, "future": self.future,
                "contrastive": self.contrastive, "temperature": self.temperature,
                "target_weight": self.target_weight, "num_items": self.num_items}


def _per_replica(loss):
    """Under tf.distribute each replica's gradients are summed: its share of a mean loss is
    loss / replicas (what Keras does for compiled losses). Unchanged with one replica."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            return loss / replicas
    return loss


@keras.saving.register_keras_serializable(package="ptum")
class PTUMPretrainer(keras.Model):
    """Backbone + the two self-supervised tasks. Loss = L_MBP + lambda * L_NBP."""

    def __init__(self, encoder: UserEncoder, objective=None, seed: int = 0, targets_per_row: float = 0.0,
                 item_idf=None, **kwargs):
        """`objective`: the objective section (ptum.config.ObjectiveConfig or its dict); `seed`
        draws masks, negatives and bag views; `targets_per_row` > 0: what NBP's summed loss is
        divided by per row (dataset_targets_per_row; 0: the batch mean); `item_idf`: the items'
        idf over the training rows (objective.bag_target_weight=idf; a checkpoint restores it)."""
        super().__init__(**kwargs)
        self.encoder = encoder
        self.objective = o = (objective if isinstance(objective, ObjectiveConfig)
                              else ObjectiveConfig(**(objective or {})))
        self.seed, self.targets_per_row = seed, float(targets_per_row)
        self.use_mbp, self.use_nbp, self.nbp_lambda = o.mbp, o.nbp, o.nbp_lambda
        self.use_bag, self.bag_weight = o.bag, o.bag_weight
        self.scoring = CandidateScoring(o.negatives, o.num_negatives, o.logq_correction, o.temperature, seed,
                                        o.label_smoothing, name="scoring")
        self.mbp = MaskedBehaviorPrediction(o.mask_rate, o.mbp_readout, seed, name="mbp") if o.mbp else None
        self.nbp = (NextBehaviorsPrediction(o.k, o.nbp_from, o.exclude_history, self.targets_per_row, name="nbp")
                    if o.nbp else None)
        self.bag = BagPrediction(o.bag_dropout, seed, o.bag_future, o.bag_contrastive, o.bag_contrastive_temperature,
                                 o.bag_target_weight, encoder.num_items, item_idf, name="bag") if o.bag else None

    def call(self, inputs, training=False):
        losses = {}
        if self.bag is not None:
            losses["bag"] = self.bag(inputs, encoder=self.encoder, training=training)
        if self.nbp is not None:
            losses["nbp"] = self.nbp(inputs, encoder=self.encoder, scoring=self.scoring, training=training)
        if self.mbp is not None:
            losses["mbp"] = self.mbp(inputs, encoder=self.encoder, scoring=self.scoring, training=training)
        return losses

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TF trainer, under tf.distribute, averages the first distributed batch across
        # replicas before it checks whether anything is left to build; a batch that does not
        # split evenly (a partial last batch) makes that reduction fail. Training builds the
        # model and its optimizer on a real batch first (ptum.training.pretrain), so nothing is left here.
        if self.built and self.optimizer is not None and self.optimizer.built:
            return None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        total = 0.0
        if "mbp" in y_pred:
            total = total + y_pred["mbp"]
        if "nbp" in y_pred:
            total = total + self.nbp_lambda * y_pred["nbp"]
        if "bag" in y_pred:
            total = total + self.bag_weight * y_pred["bag"]
        return _per_replica(total)

    def get_config(self):
        return {"encoder": keras.saving.serialize_keras_object(self.encoder), "objective": self.objective.model_dump(),
                "seed": self.seed, "targets_per_row": self.targets_per_row, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        if "objective" not in config:   # saved before: the objective's settings as keywords
            config["objective"] = {k: config.pop(k) for k in list(config) if k in ObjectiveConfig.model_fields}
        return cls(**config)


def build_pretrainer(cfg, encoder: UserEncoder, targets_per_row: float = 0.0, item_idf=None) -> PTUMPretrainer:
    """`targets_per_row`: the training rows' mean NBP targets (batches.mean_targets_per_row), which
    objective.loss_average=dataset divides each batch's summed loss by (per row); `item_idf`: the
    items' idf over the training rows (batches.item_idf), for objective.bag_target_weight=idf."""
    if not cfg.objective.nbp:
        # Only NBP reads the future-position embeddings: without it nothing trains them (they
        # stay zeros), so they are not handed to the optimizer.
        encoder.future_embedding.trainable = False
    if cfg.objective.bag and cfg.objective.bag_target_weight == "idf" and item_idf is None:
        raise ValueError("objective.bag_target_weight=idf needs the items' idf (ptum.data.batches.item_idf)")
    return PTUMPretrainer(encoder, cfg.objective, seed=cfg.train.seed,
                          targets_per_row=dataset_targets_per_row(cfg, targets_per_row), item_idf=item_idf,
                          name="ptum_pretrainer")
