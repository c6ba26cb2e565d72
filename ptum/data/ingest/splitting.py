"""Histories -> sequence rows of each split (leave-one-out, time, user-hash, window), with the
users each scheme leaves out of a split counted (`contracts.USER_CATEGORIES`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ptum.data import contracts
from ptum.data.ingest import formats
from ptum.data.ingest.formats import InputError

from ptum.data.ingest.plan import TokenizeOptions
from ptum.data.ingest.sessions import value_codes, equal_runs


@dataclass(frozen=True)
class SplitSpec:
    scheme: str
    time_cut: Optional[int] = None
    finetune_fraction: float = 0.2
    window: int = 10

    @staticmethod
    def from_options(opts: TokenizeOptions) -> "SplitSpec":
        cut = None
        if opts.split == "time":
            parsed = formats.parse_timestamps(pa.array([str(opts.time_cut)]), opts.time_unit)[0][0].as_py()
            if parsed is None:
                raise InputError(f"--time-cut {opts.time_cut!r}: not an epoch number (in --time-unit "
                                 f"{opts.time_unit}) or ISO-8601 within year 1970..9999")
            cut = int(parsed)
        if opts.split == "window" and opts.window < 1:
            raise InputError(f"--window {opts.window}: must be >= 1")
        return SplitSpec(opts.split, cut, opts.finetune_fraction, opts.window)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lens = np.maximum(ends - starts, 0)
    if lens.sum() == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return np.arange(lens.sum(), dtype=np.int64) + offs


def _rows(histories: pa.Table, tokens: np.ndarray, beh: np.ndarray, users: pa.Array,
          starts: np.ndarray, ends: np.ndarray, user_idx: np.ndarray) -> pa.Table:
    """Rows for users `user_idx` holding events [starts, ends) of the sorted histories."""
    s, e = starts[user_idx], ends[user_idx]
    flat = _ranges(s, e)
    lens = (e - s).astype(np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    ts = np.asarray(histories.column("timestamp"))
    vals = np.asarray(pc.fill_null(histories.column("value"), float("nan")))

    def lst(values, typ):
        return pa.ListArray.from_arrays(offsets, pa.array(values, typ))

    return pa.table({
        "user_id": users.take(pa.array(user_idx)),
        "item_ids": lst(tokens[flat], pa.int32()),
        "timestamps": lst(ts[flat], pa.int64()),
        "behavior_ids": lst(beh[flat], pa.int32()),
        "values": lst(vals[flat].astype(np.float32), pa.float32()),
        "length": pa.array(lens, pa.int32()),
    }, schema=contracts.sequence_schema())


def tokenize_histories(histories: pa.Table, items_vocab: pa.Table, behavior_vocab: pa.Table,
                       split: SplitSpec) -> Tuple[Dict[str, pa.Table], dict]:
    """Sorted histories of some users -> sequence rows per split (+ counts)."""
    names = contracts.SPLIT_SCHEMES[split.scheme]
    counts = {"users": 0, "events_in_sequences": 0, "oov_events": 0, "oov_behavior_events": 0,
              **{c: 0 for c in contracts.USER_CATEGORIES}, "events_after_target": 0}
    if histories.num_rows == 0:
        return {n: contracts.sequence_schema().empty_table() for n in names}, counts
    idx = pc.index_in(histories.column("item_id"), value_set=items_vocab.column("item_id"))
    tok = pc.take(items_vocab.column("token_id"), idx)
    tokens = np.asarray(pc.fill_null(tok, contracts.OOV_ID)).astype(np.int32)
    counts["oov_events"] = int(pc.sum(pc.is_null(idx)).as_py() or 0)
    bidx = pc.index_in(histories.column("behavior"), value_set=behavior_vocab.column("behavior"))
    named = pc.and_(pc.is_valid(histories.column("behavior")),
                    pc.greater(pc.utf8_length(pc.fill_null(histories.column("behavior"), "")), 0))
    counts["oov_behavior_events"] = int(pc.sum(pc.and_(named, pc.is_null(bidx))).as_py() or 0)
    beh = np.asarray(pc.fill_null(pc.take(behavior_vocab.column("behavior_id"), bidx),
                                  contracts.BEHAVIOR_UNKNOWN_ID)).astype(np.int32)
    ucodes = value_codes(histories.column("user_id"))
    starts, ends = equal_runs(ucodes)
    users = histories.column("user_id").combine_chunks().take(pa.array(starts))
    n_users = len(starts)
    lens = ends - starts
    counts["users"] = n_users
    counts["events_in_sequences"] = int(lens.sum())
    all_users = np.arange(n_users)
    out: Dict[str, pa.Table] = {}
    if split.scheme == "leave-one-out":
        long_enough = lens >= 3
        counts["users_train_only"] = int((~long_enough).sum())
        train_end = np.where(long_enough, ends - 2, ends)
        out["train"] = _rows(histories, tokens, beh, users, starts, train_end, all_users)
        ev = np.flatnonzero(long_enough)
        out["valid"] = _rows(histories, tokens, beh, users, starts, ends - 1, ev)
        out["test"] = _rows(histories, tokens, beh, users, starts, ends, ev)
    elif split.scheme == "time":
        ts = np.asarray(histories.column("timestamp"))
        before = ts < split.time_cut
        # Events before the cut per user = prefix length (histories are time-sorted).
        n_before = np.add.reduceat(before.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)
        has_train = n_before > 0
        out["train"] = _rows(histories, tokens, beh, users, starts, starts + n_before, np.flatnonzero(has_train))
        # Test: history before the cut + the first event at or after it. A user whose events all
        # come after the cut is a test row with an empty history (users_test_only); one whose
        # events all come before it is in train only (users_train_only).
        has_target = n_before < lens
        ev = np.flatnonzero(has_target)
        out["test"] = _rows(histories, tokens, beh, users, starts, starts + n_before + 1, ev)
        counts["users_train_only"] = int((~has_target).sum())
        counts["users_test_only"] = int((~has_train).sum())
        counts["events_after_target"] = int(np.maximum(lens - n_before - 1, 0)[has_target].sum())
    elif split.scheme == "window":
        # Future windows of W behaviors: train = all but the last 2W (what pre-training
        # sees), valid = all but the last W (its own last W are the validation window, never
        # trained on), test = all (the last W are the test window). A user with W behaviors or
        # fewer has no window: the whole history is in train (users_train_only). One with
        # W+1..2W has no behavior outside the two windows: valid and test only (users_eval_only).
        w = split.window
        evaluated = lens > w
        has_train = (lens - 2 * w >= 1) | ~evaluated
        counts["users_train_only"] = int((~evaluated).sum())
        counts["users_eval_only"] = int((~has_train).sum())
        train_end = np.where(evaluated, ends - 2 * w, ends)
        out["train"] = _rows(histories, tokens, beh, users, starts, train_end, np.flatnonzero(has_train))
        out["valid"] = _rows(histories, tokens, beh, users, starts, ends - w, np.flatnonzero(evaluated))
        out["test"] = _rows(histories, tokens, beh, users, starts, ends, np.flatnonzero(evaluated))
    else:
        h = np.array([contracts.stable_user_hash(u) for u in users.to_pylist()])
        fine = h < split.finetune_fraction
        out["pretrain"] = _rows(histories, tokens, beh, users, starts, ends, np.flatnonzero(~fine))
        out["finetune"] = _rows(histories, tokens, beh, users, starts, ends, np.flatnonzero(fine))
    return out, counts
