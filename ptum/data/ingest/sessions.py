"""Per-user histories: accepted events grouped by user and sorted by time (ties keep input
order), duplicates dropped, the newest `max_history` kept; item and behavior counts.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ptum.data.ingest import formats



def build_histories(tables: Sequence[pa.Table], max_history: int):
    """Events of some users -> time-ordered, de-duplicated, truncated histories.

    Ties in timestamp keep input order (file, row). Returns the table sorted by
    (user, time, file, row) and a counts dict.
    """
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return formats.empty_events(), {"duplicates_dropped": 0, "events_truncated": 0,
                                        "events_accepted": 0}
    t = pa.concat_tables(tables).combine_chunks()
    user_codes = value_codes(t.column("user_id"))
    item_codes = value_codes(t.column("item_id"))
    beh_codes = value_codes(pc.fill_null(t.column("behavior"), "\x00"))
    ts = t.column("timestamp").to_numpy()
    file_idx = t.column("file_idx").to_numpy()
    row = t.column("row").to_numpy()
    # Input order position: (file, row) -> one sortable int.
    order_key = file_idx.astype(np.int64) * (1 << 40) + row
    # Exact repeats of (user, item, behavior, timestamp): keep the first in input order.
    o = np.lexsort((order_key, beh_codes, item_codes, ts, user_codes))
    same = np.zeros(len(o), dtype=bool)
    same[1:] = ((user_codes[o][1:] == user_codes[o][:-1]) & (ts[o][1:] == ts[o][:-1])
                & (item_codes[o][1:] == item_codes[o][:-1]) & (beh_codes[o][1:] == beh_codes[o][:-1]))
    keep = np.ones(len(o), dtype=bool)
    keep[o[same]] = False
    duplicates = int(same.sum())
    # Sort by user id string order (stable names in the output), then time, then input order.
    user_rank = _rank(t.column("user_id"))
    idx = np.flatnonzero(keep)
    o2 = idx[np.lexsort((order_key[idx], ts[idx], user_rank[idx]))]
    truncated = 0
    if max_history and max_history > 0:
        u = user_rank[o2]
        starts, ends = equal_runs(u)
        lens = ends - starts
        drop = np.maximum(lens - max_history, 0)
        truncated = int(drop.sum())
        if truncated:
            keep2 = np.ones(len(o2), dtype=bool)
            for s, d in zip(starts[drop > 0], drop[drop > 0]):
                keep2[s:s + d] = False  # oldest first
            o2 = o2[keep2]
    out = t.take(pa.array(o2))
    counts = {"duplicates_dropped": duplicates, "events_truncated": truncated,
              "events_accepted": int(len(idx))}
    return out, counts


def value_codes(col) -> np.ndarray:
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    return np.asarray(enc.indices).astype(np.int64)


def _rank(col) -> np.ndarray:
    """Rank of each value in sorted order of distinct values (string order)."""
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    dict_sort = np.asarray(pc.sort_indices(enc.dictionary))
    rank_of_code = np.empty(len(dict_sort), dtype=np.int64)
    rank_of_code[dict_sort] = np.arange(len(dict_sort))
    return rank_of_code[np.asarray(enc.indices)]


def equal_runs(sorted_codes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    if len(sorted_codes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    return np.concatenate([[0], bounds]), np.concatenate([bounds, [len(sorted_codes)]])


def value_counts(col) -> pa.Table:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    vc = pc.value_counts(col)
    return pa.table({"key": vc.field("values"), "count": pc.cast(vc.field("counts"), pa.int64())})


def merge_counts(tables: Sequence[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return pa.table({"key": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
    t = pa.concat_tables(tables)
    g = t.group_by("key").aggregate([("count", "sum")])
    return pa.table({"key": g.column("key"), "count": g.column("count_sum")})


def history_stats(histories: pa.Table) -> Tuple[pa.Table, pa.Table]:
    """(item counts, behavior counts) of accepted events (before truncation counts are
    not needed: the vocabulary counts the events that reach the sequences)."""
    beh = pc.fill_null(histories.column("behavior"), "") if histories.num_rows else pa.array([], pa.string())
    bc = value_counts(beh)
    bc = bc.filter(pc.greater(pc.utf8_length(bc.column("key")), 0)) if bc.num_rows else bc
    return value_counts(histories.column("item_id")), bc
