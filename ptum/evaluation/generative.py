"""Next-item metrics of a generative retrieval model (ptum.model.generative), by the protocol
of ptum.evaluation.ranking: each row's last behavior is the target of the history before it;
headline metrics leave the user's history items (the target excepted) out of the beam search
itself, as the served top_k does, so the beam's width goes to items that can be shown;
`*_unfiltered` come from a plain search. The list is the beam's items, best first: an item the
beam did not reach is a miss, so the largest cut-off must not exceed generative.beam_size.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np

from ptum.data import contracts
from ptum.data.batches import Rows, eval_batches, flat_positions
from ptum.model.generative import catalog_cap, merge_prefix_matches


def beam_function(model, beam_size: int, excluding: bool = False) -> Callable:
    """history batch [B, T] int32 (and with `excluding`, the items to leave out [B, E]) ->
    (items [B, K], scores [B, K]) as numpy, compiled once per model, beam size and kind
    (TensorFlow: one graph for any batch and width), so that validating every epoch does not
    trace the search again."""
    cache = model.__dict__.get("_ptum_beam_functions")
    if cache is None:    # a plain attribute (not tracked by Keras), freed with the model
        cache = {}
        object.__setattr__(model, "_ptum_beam_functions", cache)
    if (beam_size, excluding) not in cache:
        cache[beam_size, excluding] = _compile(model, beam_size, excluding)
    return cache[beam_size, excluding]


def _compile(model, beam_size: int, excluding: bool) -> Callable:
    def search(ids, *exclude):
        return model.beam_search(ids, beam_size, *exclude)

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(search, input_signature=[tf.TensorSpec([None, None], tf.int32)] * (1 + excluding))
    elif keras.backend.backend() == "jax":
        import jax

        fn = jax.jit(search)
    else:
        fn = search

    def run(ids, *exclude):
        assert len(exclude) == excluding, "an excluding search takes the items to leave out"
        with warnings.catch_warnings():   # the first decoding step attends over one token, by design
            warnings.filterwarnings("ignore", message="You are using a softmax over axis")
            items, scores = fn(np.asarray(ids, np.int32), *(np.asarray(e, np.int32) for e in exclude))
        return np.asarray(keras.ops.convert_to_numpy(items)), np.asarray(keras.ops.convert_to_numpy(scores))
    return run


def history_exclusion(rows: Rows, idx: np.ndarray) -> np.ndarray:
    """[B, E] int32: row idx[b]'s behaviors before its last, but its target (the protocol keeps
    the target rankable), PAD_ID after them: what the filtered lists leave out."""
    starts, ends = rows.offsets[idx], rows.offsets[idx + 1] - 1
    lens = ends - starts
    out = np.full((len(idx), max(int(lens.max(initial=0)), 1)), contracts.PAD_ID, np.int32)
    hist = rows.items[flat_positions(starts, lens)]
    out[np.repeat(np.arange(len(idx)), lens), flat_positions(np.zeros_like(lens), lens)] = hist
    targets = rows.items[rows.offsets[idx + 1] - 1]
    return np.where(out == targets[:, None], contracts.PAD_ID, out).astype(np.int32)


def in_history(rows: Rows, idx: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[B, K] bool: item k of row b is among row idx[b]'s behaviors before its last one."""
    starts, ends = rows.offsets[idx], rows.offsets[idx + 1] - 1
    lens = ends - starts
    row_of = np.repeat(np.arange(len(idx)), lens)
    hist = rows.items[flat_positions(starts, lens)]
    big = np.int64(1) << 32
    keys = row_of.astype(np.int64) * big + hist.astype(np.int64)
    asked = np.arange(len(idx))[:, None].astype(np.int64) * big + items.astype(np.int64)
    return np.isin(asked, keys)


def list_metrics(items: np.ndarray, kept: np.ndarray, targets: np.ndarray,
                 ks: Sequence[int]) -> Dict[str, np.ndarray]:
    """Per-row recall@k and ndcg@k of ranked lists `items` [B, L] (best first) in which only
    the `kept` slots are shown: the target's rank counts the kept items ahead of it."""
    is_target = (items == targets[:, None]) & kept
    before = np.cumsum(kept, axis=1) - kept         # kept items ahead of each slot
    found = is_target.any(axis=1)
    rank = np.where(found, before[np.arange(len(items)), np.argmax(is_target, axis=1)], 1 << 30)
    out = {}
    for k in ks:
        hit = found & (rank < k)
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = hit / np.log2(rank + 2.0)
    return out


def cap_new_items(kept: np.ndarray, new: np.ndarray, cap: Optional[int]) -> np.ndarray:
    """`kept` [B, L] with each row's new items (`new`) past the cap-th shown one dropped (the
    items after them move up): TIGER's epsilon share of unseen items in a top-k."""
    if cap is None:
        return kept
    return kept & (~new | (np.cumsum(kept & new, axis=1) <= cap))


def generative_metrics(model, rows: Rows, width: int, buckets: Sequence[int], beam_size: int,
                       batch_size: int = 256, ks: Sequence[int] = (5, 10),
                       catalog_from: Optional[int] = None, unfiltered: bool = True) -> Dict[str, float]:
    """{"ndcg@k", "recall@k", with `unfiltered` their `_unfiltered`, "coverage@10", "users"}
    over `rows`. The headline lists come from a search that leaves the history out (as the
    served top_k does); the unfiltered ones from a plain search (a second one, so validation
    asks for none). `catalog_from`: the first token of the catalog's items without events (a
    model trained with generative.catalog_items): each top-k holds at most catalog_cap(k,
    epsilon) of them, as the served signatures do."""
    searches = {"": beam_function(model, beam_size, excluding=True)}
    if unfiltered:
        searches["_unfiltered"] = beam_function(model, beam_size)
    twins = model.catalog_twins(catalog_from, beam_size) if catalog_from is not None else None
    sums = {f"{m}@{k}{s}": 0.0 for m in ("ndcg", "recall") for k in ks for s in searches}
    eps = model.generative.catalog_items_epsilon

    def cap(k: int) -> Optional[int]:
        return catalog_cap(k, eps) if catalog_from is not None else None

    top, n = set(), 0
    for idx, batch in eval_batches(rows, batch_size, width, buckets, 0):
        targets = rows.items[rows.offsets[idx + 1] - 1].astype(np.int64)
        for suffix, search in searches.items():
            items, scores = search(batch["item_ids"], *([] if suffix else [history_exclusion(rows, idx)]))
            if twins is not None:    # catalog items beside their decoded twins
                items = np.asarray(keras.ops.convert_to_numpy(merge_prefix_matches(items, scores, twins)[0]))
            kept = items >= contracts.FIRST_ITEM_ID
            if not suffix and twins is not None:   # a catalog twin may be a history item (the search left out the rest)
                kept &= ~in_history(rows, idx, items) | (items == targets[:, None])
            new = items >= catalog_from if catalog_from is not None else np.zeros_like(kept)
            for k in ks:
                shown = cap_new_items(kept, new, cap(k))
                for name, per_row in list_metrics(items, shown, targets, [k]).items():
                    sums[f"{name}{suffix}"] += float(per_row.sum())
            if suffix == "":
                kept = cap_new_items(kept, new, cap(10))
                before = np.cumsum(kept, axis=1) - kept
                firsts = np.where(kept & (before < 10), items, -1)
                top.update(np.unique(firsts[firsts >= 0]).tolist())
        n += len(idx)
    out = {k: (v / n if n else 0.0) for k, v in sums.items()}
    coded = int((np.asarray(keras.ops.convert_to_numpy(model.item_codes.value)) >= 0).all(axis=1).sum())
    out["coverage@10"] = len(top) / max(coded, 1)
    out["users"] = n
    return out
