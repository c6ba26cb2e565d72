"""Checks that judge a new span before anything trains on it (the pipeline's ValidationGate
applies them; plain functions, no TFX, so they are tested on their own).

- Dead letters of the *newest span's* files, not averaged over the window of spans that a run
  reads: a 12%-malformed span in a window of three is 12%, not 4%.
- Id columns: the new window's ids against the blessed model's dataset (its vocabulary and
  users). Swapped or shifted columns show as items the blessed model never saw, user ids that
  are the blessed model's item ids, events per user distributed like its events per item, or
  an items-per-user ratio far from the blessed one.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from ptum.data import contracts


def newest_span_counts(manifest: dict, files: Sequence[str]) -> dict:
    """Records read and dead-lettered in `files` (the newest span's inputs), from the manifest's
    per-file counts."""
    by_file = manifest.get("inputs_read") or {}
    missing = [f for f in files if f not in by_file]
    if missing:
        raise ValueError(f"the manifest has no counts for {missing[0]} (tokenized by an older version?)")
    read = sum(by_file[f]["events_read"] for f in files)
    dead = sum(by_file[f]["dead_lettered"] for f in files)
    return {"files": len(files), "events_read": read, "dead_lettered": dead, "rate": dead / max(read, 1)}


def _users(ds: contracts.SequenceDataset) -> set:
    out: set = set()
    for split in ds.splits:
        out.update(ds.read_split(split, ["user_id"]).column("user_id").to_pylist())
    return out


def _items(ds: contracts.SequenceDataset) -> set:
    v = ds.read_items_vocab()
    return set(v.column("item_id").to_pylist()) if v is not None else set()


# A new window's per-user history lengths must not look more like the blessed data's per-item
# counts than like its per-user lengths by more than this (Jensen-Shannon of scale-free
# histograms): with integer ids in one range for both columns, only the shape of the columns
# tells a swap apart.
SHAPE_MARGIN = 0.1


def _log2_hist(values, bins: int = 24):
    """Histogram of log2(value / median) in half-octave bins: the shape of a count distribution,
    free of its scale (a window of three spans has users three times as long as one span's)."""
    import numpy as np

    v = np.asarray(values, np.float64)
    v = v[v > 0]
    if not len(v):
        return np.zeros(bins)
    z = np.floor(2 * np.log2(v / np.median(v)) + bins // 2)
    h = np.bincount(np.clip(z, 0, bins - 1).astype(np.int64), minlength=bins).astype(np.float64)
    return h / h.sum()


def _js(p, q) -> float:
    import numpy as np

    m = (p + q) / 2

    def kl(a, b):
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / b[nz])).sum())
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def _user_lengths(ds: contracts.SequenceDataset):
    """Each user's longest row (the fullest history it has in any split)."""
    import pyarrow as pa

    t = pa.concat_tables([ds.read_split(s, ["user_id", "length"]) for s in ds.splits])
    return t.group_by("user_id").aggregate([("length", "max")]).column("length_max").to_numpy()


def _item_counts(ds: contracts.SequenceDataset):
    v = ds.read_items_vocab()
    return v.column("count").to_numpy() if v is not None else []


def id_measures(new: contracts.SequenceDataset, blessed: contracts.SequenceDataset,
                oov_vs_blessed: float) -> dict:
    """How the new window's id columns relate to the blessed model's dataset.
    `oov_vs_blessed`: the share of the window's events whose item is out of the blessed
    vocabulary (measured by tokenizing with that vocabulary, before any rebuild)."""
    users, base_users, base_items = _users(new), _users(blessed), _items(blessed)
    n = max(len(users), 1)
    c, bc = new.manifest["counts"], blessed.manifest["counts"]
    ratio = c.get("items_seen", c["items"]) / max(c["users"], 1)
    base_ratio = bc.get("items_seen", bc["items"]) / max(bc["users"], 1)
    shape = _log2_hist(_user_lengths(new))
    return {
        "blessed_dataset": blessed.root,
        "user_lengths_vs_users": round(_js(shape, _log2_hist(_user_lengths(blessed))), 6),
        "user_lengths_vs_items": round(_js(shape, _log2_hist(_item_counts(blessed))), 6),
        "item_overlap": round(1.0 - oov_vs_blessed, 6),
        "users_known_as_users": round(len(users & base_users) / n, 6),
        "users_known_as_items": round(len(users & base_items) / n, 6),
        "items_per_user": round(ratio, 6),
        "blessed_items_per_user": round(base_ratio, 6),
    }


def judge(deadletters: dict, ids: Optional[dict], max_deadletter_rate: float, min_item_overlap: float,
          max_id_crossing: float, max_id_ratio_change: float) -> List[Dict[str, object]]:
    """Problems (each a dict with `kind` and a readable `reason`); empty when the span is fit."""
    problems: List[Dict[str, object]] = []
    if deadletters["rate"] > max_deadletter_rate:
        problems.append({"kind": "dead_letters", "rate": round(deadletters["rate"], 6),
                         "threshold": max_deadletter_rate,
                         "reason": f"{deadletters['dead_lettered']} of the newest span's {deadletters['events_read']} "
                                   f"records are dead letters ({deadletters['rate']:.1%} > {max_deadletter_rate:.1%})"})
    if not ids:
        return problems
    if ids["item_overlap"] < min_item_overlap:
        problems.append({"kind": "id_columns", "check": "item_overlap", "value": ids["item_overlap"],
                         "threshold": min_item_overlap,
                         "reason": f"only {ids['item_overlap']:.1%} of the events' items are known to the blessed "
                                   f"model (min {min_item_overlap:.0%}): swapped or shifted columns, or another "
                                   "catalog (lower min_item_overlap to accept a new catalog)"})
    crossing = ids["users_known_as_items"] - ids["users_known_as_users"]
    if crossing > max_id_crossing:
        problems.append({"kind": "id_columns", "check": "user_ids_are_items", "value": round(crossing, 6),
                         "threshold": max_id_crossing,
                         "reason": f"{ids['users_known_as_items']:.1%} of the user ids are item ids of the blessed "
                                   f"model, {ids['users_known_as_users']:.1%} are its users: the user and item "
                                   "columns look swapped"})
    shape_gap = ids.get("user_lengths_vs_users", 0.0) - ids.get("user_lengths_vs_items", 0.0)
    if shape_gap > SHAPE_MARGIN:
        problems.append({"kind": "id_columns", "check": "user_lengths_look_like_item_counts",
                         "value": round(shape_gap, 6), "threshold": SHAPE_MARGIN,
                         "reason": f"events per user are distributed like the blessed data's events per item "
                                   f"(Jensen-Shannon {ids['user_lengths_vs_items']:.3f}) rather than like its events "
                                   f"per user ({ids['user_lengths_vs_users']:.3f}): the user and item columns look "
                                   "swapped"})
    if ids["items_per_user"] > 0 and ids["blessed_items_per_user"] > 0 and max_id_ratio_change > 0:
        change = math.exp(abs(math.log(ids["items_per_user"] / ids["blessed_items_per_user"])))
        if change > max_id_ratio_change:
            problems.append({"kind": "id_columns", "check": "items_per_user", "value": round(change, 4),
                             "threshold": max_id_ratio_change,
                             "reason": f"distinct items per user {ids['items_per_user']:.3f} against "
                                       f"{ids['blessed_items_per_user']:.3f} for the blessed model's data "
                                       f"({change:.1f}x > {max_id_ratio_change}x): swapped or shifted id columns"})
    return problems
