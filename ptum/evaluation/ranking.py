"""Next-item evaluation: full ranking over all items, batched.

For each row with >= 2 behaviors, the history (all but the last behavior) gives the
user embedding and the last behavior is the target. Headline metrics exclude the
user's history items from the ranking (as S3-Rec's code, RecBole full-sort and
RecTools' filter_viewed do); `*_unfiltered` keep them. The target itself is never
excluded. Reserved token ids (padding, mask, OOV) are never ranked.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import keras
import numpy as np

from ptum.data import contracts
from ptum.data.batches import Rows, eval_batches
from ptum.model.encoder import UserEmbedder


class NonFiniteScores(ValueError):
    """The model produced NaN or infinite scores: it fails evaluation (and is never blessed)."""


def item_table_numpy(encoder) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(encoder.item_table(training=False)), dtype=np.float32)


def embedding_space_numpy(encoder):
    """(table [V, d], bias [V]) the user embedding is scored against, as numpy."""
    table, bias = encoder.embedding_space()
    return (np.asarray(keras.ops.convert_to_numpy(table), np.float32),
            np.asarray(keras.ops.convert_to_numpy(bias), np.float32))


def rank_metrics(embedder: UserEmbedder, rows: Rows, width: int, buckets: Sequence[int], time_buckets: int,
                 batch_size: int = 512, ks: Sequence[int] = (10, 20)) -> Dict[str, float]:
    table = item_table_numpy(embedder.encoder)
    n_items = table.shape[0]
    n_real = n_items - contracts.FIRST_ITEM_ID
    sums = {f"{m}@{k}{s}": 0.0 for m in ("ndcg", "recall") for k in ks for s in ("", "_unfiltered")}
    top_items = set()
    n = 0
    for idx, batch in eval_batches(rows, batch_size, width, buckets, time_buckets):
        users = np.asarray(keras.ops.convert_to_numpy(embedder.predict_on_batch(batch)), dtype=np.float32)
        scores = users @ table.T
        bad = ~np.isfinite(scores[:, contracts.FIRST_ITEM_ID:]).all(axis=1)
        if bad.any():
            # NaN compares false with everything: every rank would be 0 and the model "perfect".
            raise NonFiniteScores(
                f"{int(bad.sum())} of {len(idx)} users in a batch get non-finite scores (first: "
                f"{rows.user_ids[idx[np.flatnonzero(bad)[0]]]!r}); the model cannot be evaluated")
        scores[:, : contracts.FIRST_ITEM_ID] = -np.inf
        starts = rows.offsets[idx]
        ends = rows.offsets[idx + 1]
        targets = rows.items[ends - 1].astype(np.int64)
        r = np.arange(len(idx))
        valid = targets >= contracts.FIRST_ITEM_ID  # an OOV target cannot be ranked: a miss
        target_scores = scores[r, np.where(valid, targets, 0)]
        rank_unf = (scores > target_scores[:, None]).sum(axis=1)
        # History filter: every earlier behavior of the user, except the target item itself.
        lens = ends - 1 - starts
        hist_rows = np.repeat(r, lens)
        hist_items = rows.items[np.concatenate([np.arange(s, e - 1) for s, e in zip(starts, ends)])] \
            if lens.sum() else np.zeros(0, np.int64)
        keep = hist_items != targets[hist_rows]
        scores[hist_rows[keep], hist_items[keep]] = -np.inf
        rank = (scores > target_scores[:, None]).sum(axis=1)
        top = np.argpartition(-scores, min(9, n_items - 1), axis=1)[:, :10]
        top_items.update(np.unique(top).tolist())
        for k in ks:
            for suffix, rk in (("", rank), ("_unfiltered", rank_unf)):
                hit = valid & (rk < k)
                sums[f"recall@{k}{suffix}"] += float(hit.sum())
                sums[f"ndcg@{k}{suffix}"] += float((hit / np.log2(rk + 2.0)).sum())
        n += len(idx)
    out = {k: (v / n if n else 0.0) for k, v in sums.items()}
    out["coverage@10"] = len([i for i in top_items if i >= contracts.FIRST_ITEM_ID]) / max(n_real, 1)
    out["users"] = n
    return out


def evaluate_model(model_dir: str, data_dir: str, split: str, beam_size: Optional[int] = None) -> dict:
    """Next-item metrics of a finished model folder on one split of a dataset with the same
    vocabulary: {"split", "model", "data", "ndcg@10", ...}. `beam_size`: a generative model's
    beams per step (default: its config's)."""
    from ptum.model.saving import GENERATIVE_MODEL, load_model_dir

    encoder, meta, cfg = load_model_dir(model_dir, generative=True)
    ds = contracts.open_dataset(data_dir)
    if ds.vocab_hash != meta["vocab_hash"]:
        raise contracts.DatasetError(
            f"{data_dir}: vocabulary {ds.vocab_hash} does not match the model's {meta['vocab_hash']}; "
            f"tokenize with --vocab-from the model's training dataset")
    rows = Rows.from_split(ds, split)
    if meta["model"] == GENERATIVE_MODEL:
        from ptum.evaluation.generative import generative_metrics

        beam = beam_size or cfg.generative.beam_size
        if beam < 1:
            raise ValueError(f"beam size {beam}: must be >= 1")
        metrics = generative_metrics(encoder, rows, meta["max_len"], meta["length_buckets"], beam,
                                     cfg.train.eval_batch_size, ks=[k for k in (5, 10, 20) if k <= beam],
                                     catalog_from=ds.num_item_tokens if cfg.generative.catalog_items else None)
        return {"split": split, "model": model_dir, "data": data_dir, "beam_size": beam, **metrics}
    if beam_size is not None:
        raise ValueError(f"{model_dir}: a beam size is for a generative retrieval model; this one ranks the catalog")
    metrics = rank_metrics(UserEmbedder(encoder), rows, meta["max_len"], meta["length_buckets"],
                           meta["time_buckets"], cfg.train.eval_batch_size)
    return {"split": split, "model": model_dir, "data": data_dir, **metrics}
