"""Feature transforms with one definition each, shared by the input pipeline (numpy),
evaluation and the serving graph (keras.ops, through ptum.model.layers.SequencePreprocessing):
windowing and padding (`window_positions`, `window`) and log2 time-gap buckets (`time_buckets`).

Each function takes the array namespace `xp` (``numpy`` or ``keras.ops``) and uses only
the names both provide, so training and serving cannot drift apart: the exported graph
runs exactly the arithmetic the model was trained on. Integer arithmetic only: a float
``log2`` is not exact once a graph optimiser rewrites it (``log(x) / log(2)`` became a
multiplication by ``1/ln 2`` and put gaps of 2^k - 1 one bucket low).
"""
from __future__ import annotations

import numpy as np

# 2^k fits int64 up to k = 62; more buckets than that could never be told apart.
MAX_TIME_BUCKETS = 63


def gap_thresholds(buckets: int) -> np.ndarray:
    """Gaps g with floor(log2(g + 1)) >= k start at 2^k - 1, for k = 1 .. buckets - 1."""
    if buckets > MAX_TIME_BUCKETS:
        raise ValueError(f"time_buckets={buckets}: at most {MAX_TIME_BUCKETS}")
    return np.array([(1 << k) - 1 for k in range(1, max(buckets, 1))], dtype=np.int64)


def log2_gap_bucket(gaps, buckets: int, xp=np):
    """min(buckets - 1, floor(log2(g + 1))) for integer gaps g >= 0, exactly: the number of
    thresholds 2^k - 1 (k >= 1) that g reaches."""
    thr = gap_thresholds(buckets)
    if len(thr) == 0:
        return xp.zeros_like(gaps)
    reached = xp.greater_equal(xp.expand_dims(gaps, -1), thr)
    return xp.sum(xp.where(reached, 1, 0), axis=-1)


def time_buckets(ts, valid, buckets: int, xp=np):
    """Time-gap bucket per position of left-padded [B, T] timestamps: 0 for padding,
    1 + log2_gap_bucket(gap) otherwise, where gap is the time since the previous valid
    behavior (0 for the first one; negative gaps count as 0)."""
    prev_valid = xp.concatenate([xp.zeros_like(valid[:, :1]), valid[:, :-1]], axis=1)
    diff = xp.concatenate([xp.zeros_like(ts[:, :1]), ts[:, 1:] - ts[:, :-1]], axis=1)
    gaps = xp.where(xp.logical_and(prev_valid, valid), diff, xp.zeros_like(diff))
    gaps = xp.maximum(gaps, xp.zeros_like(gaps))
    return xp.where(valid, 1 + log2_gap_bucket(gaps, buckets, xp), 0)


def window_positions(lengths, width: int, xp=np):
    """Where each of a row's newest `width` behaviors goes in a left-padded [B, width] window:
    (src, valid), src[b, c] the behavior's index within its row (0 where not valid)."""
    col = xp.expand_dims(xp.arange(width), 0)
    # xp's functions, not operators: keras.ops promotes mixed integer types, TF's operators do not.
    valid = xp.greater_equal(col, xp.subtract(width, xp.expand_dims(xp.minimum(lengths, width), 1)))
    return xp.where(valid, xp.add(xp.subtract(xp.expand_dims(lengths, 1), width), col), 0), valid


def window(columns, lengths, width: int, xp=np):
    """Right-padded [B, T] integer rows, one array per column (item ids, timestamps, ...) with
    the rows' `lengths` -> (each column's newest `width` values, left-padded with 0; the valid
    mask). T may be 0; the positions are worked out once for all columns."""
    src, valid = window_positions(lengths, width, xp)
    # One zero column on the right, so every index gathers something even when T is 0.
    pad = xp.expand_dims(xp.zeros_like(lengths), 1)
    src = xp.minimum(src, xp.shape(columns[0])[1])
    out = [xp.take_along_axis(xp.concatenate([values, pad], axis=1), src, axis=1) for values in columns]
    return [xp.where(valid, o, xp.zeros_like(o)) for o in out], valid
