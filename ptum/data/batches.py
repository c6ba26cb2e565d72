"""Backend-agnostic input: sequence rows (Parquet) -> left-padded numpy batches.

Rows are held as flat numpy arrays + offsets (no per-example Python objects); a
batch is cut from them with one vectorised gather. Batches group sequences of
similar length (length buckets), so short histories do not pay for padding; the
order is a pure function of (seed, epoch), which makes resume exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from ptum.data import contracts, transforms

FEATURES = ("item_ids", "behavior_ids", "time_buckets")


@dataclass
class Rows:
    """Sequence rows as flat arrays: row i spans values[offsets[i]:offsets[i+1]]."""

    user_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    behaviors: np.ndarray
    timestamps: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_table(cls, table) -> "Rows":
        import pyarrow.compute as pc

        def flat(col, dtype):
            c = table.column(col)
            return np.asarray(pc.list_flatten(c), dtype=dtype) if table.num_rows else np.zeros(0, dtype)

        if table.num_rows:
            lens = np.asarray(pc.fill_null(pc.list_value_length(table.column("item_ids")), 0), np.int64)
        else:
            lens = np.zeros(0, np.int64)
        return cls(user_ids=np.asarray(table.column("user_id").to_pylist() if table.num_rows else [], dtype=object),
                   offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                   items=flat("item_ids", np.int32), behaviors=flat("behavior_ids", np.int32),
                   timestamps=flat("timestamps", np.int64))

    @classmethod
    def from_split(cls, dataset: contracts.SequenceDataset, split: str) -> "Rows":
        return cls.from_table(dataset.read_split(split))

    def newest_with(self, older: "Rows") -> "Rows":
        """These rows plus the rows of `older` whose user is not among them (e.g. each user's
        newest history: valid rows, then train rows of users too short for a valid row)."""
        extra = older.take(np.flatnonzero(~np.isin(older.user_ids.astype(str), self.user_ids.astype(str))))
        lens = np.concatenate([self.lengths, extra.lengths])
        return Rows(user_ids=np.concatenate([self.user_ids, extra.user_ids]),
                    offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                    items=np.concatenate([self.items, extra.items]),
                    behaviors=np.concatenate([self.behaviors, extra.behaviors]),
                    timestamps=np.concatenate([self.timestamps, extra.timestamps]))

    def take(self, idx: np.ndarray) -> "Rows":
        """Rows `idx`, in that order."""
        idx = np.asarray(idx, np.int64)
        lens = self.lengths[idx]
        pos = flat_positions(self.offsets[idx], lens)
        return Rows(user_ids=self.user_ids[idx], offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                    items=self.items[pos], behaviors=self.behaviors[pos], timestamps=self.timestamps[pos])

    def without_items(self, tokens) -> "Rows":
        """The same rows with every behavior on the item tokens `tokens` removed (rows left
        empty are dropped): the data of a catalog in which those items never appeared."""
        keep = ~np.isin(self.items, np.asarray(tokens, self.items.dtype))
        row_of = np.repeat(np.arange(len(self)), self.lengths)
        lens = np.bincount(row_of[keep], minlength=len(self)).astype(np.int64)
        rows = lens > 0
        return Rows(user_ids=self.user_ids[rows], offsets=np.concatenate([[0], np.cumsum(lens[rows])]).astype(np.int64),
                    items=self.items[keep], behaviors=self.behaviors[keep], timestamps=self.timestamps[keep])


def flat_positions(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The flat value positions of rows that start at `starts` and hold `lens` values, row after row."""
    return np.repeat(starts, lens) + np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)


def time_buckets_for(ts: np.ndarray, valid: np.ndarray, buckets: int) -> np.ndarray:
    """log2 time-gap bucket per position (ptum.data.transforms.time_buckets, the definition the
    serving graph uses too): 1 + min(buckets - 1, floor(log2(gap + 1))), 0 for padding."""
    return np.asarray(transforms.time_buckets(ts, valid, buckets, np), np.int32)


def pad_batch(rows: Rows, idx: np.ndarray, width: int, ends: Optional[np.ndarray] = None,
              time_buckets: int = 32) -> Dict[str, np.ndarray]:
    """Rows `idx` (each cut at `ends`, default its length) -> the newest `width` behaviors,
    left-padded."""
    starts = rows.offsets[idx]
    lens = rows.lengths[idx] if ends is None else np.asarray(ends)
    b = len(idx)
    pos, valid = transforms.window_positions(lens, width, np)   # the serving graph's windowing too
    src = np.where(valid, starts[:, None] + pos, 0)
    items = np.where(valid, rows.items[src] if len(rows.items) else 0, contracts.PAD_ID).astype(np.int32)
    beh = np.where(valid, rows.behaviors[src] if len(rows.behaviors) else 0, 0).astype(np.int32)
    ts = np.where(valid, rows.timestamps[src] if len(rows.timestamps) else 0, 0)
    out = {"item_ids": items.reshape(b, width), "behavior_ids": beh.reshape(b, width)}
    out["time_buckets"] = time_buckets_for(ts.reshape(b, width), valid, max(time_buckets, 1))
    return out


def mean_targets_per_row(lengths: np.ndarray, window: int) -> float:
    """The mean number of next-item targets a training row gives from every prefix: a row of n
    behaviors in a window of `window` has min(n, window) - 1 (its first one is no target)."""
    lengths = np.asarray(lengths, np.int64)
    return float(np.maximum(np.minimum(lengths, window) - 1, 0).mean()) if len(lengths) else 0.0


def item_idf(rows: "Rows", vocab_size: int) -> np.ndarray:
    """[vocab_size] float32: log((1 + N) / (1 + df)) + 1, df = how many of the N rows hold the item
    (TF-IDF's smoothed idf; an item no row holds gets the largest)."""
    row = np.repeat(np.arange(len(rows), dtype=np.int64), rows.lengths)
    items = rows.items.astype(np.int64)
    inside = (items >= 0) & (items < vocab_size)
    pairs = np.unique(row[inside] * vocab_size + items[inside])       # each (row, item) once
    df = np.bincount(pairs % vocab_size, minlength=vocab_size).astype(np.float64)
    return (np.log((1.0 + len(rows)) / (1.0 + df)) + 1.0).astype(np.float32)


def bucket_widths(lengths: np.ndarray, buckets: Sequence[int], max_width: int) -> np.ndarray:
    """Padded width per length: the smallest bucket that holds it, else max_width."""
    edges = np.array(sorted(b for b in buckets if b < max_width) + [max_width], np.int64)
    return edges[np.searchsorted(edges, np.minimum(lengths, max_width))]


def bucket_width(length: int, buckets: Sequence[int], max_width: int) -> int:
    return int(bucket_widths(np.array([length]), buckets, max_width)[0])


def epoch_batches(lengths: np.ndarray, batch_size: int, buckets: Sequence[int], max_width: int,
                  seed: int, epoch: int, shuffle: bool = True) -> List[np.ndarray]:
    """Batches of row indices grouped by length bucket; a pure function of (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    widths = bucket_widths(lengths[order], buckets, max_width)
    batches = []
    for w in np.unique(widths):
        members = order[widths == w]
        for i in range(0, len(members), batch_size):
            batches.append(members[i:i + batch_size])
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _keras_pydataset():
    import keras
    return keras.utils.PyDataset


class TrainBatches(_keras_pydataset()):
    """Training batches for `model.fit` (windows of width max_len + extra columns)."""

    def __init__(self, rows: Rows, batch_size: int, width: int, buckets: Sequence[int], seed: int,
                 time_buckets: int, epoch: int = 0, skip: int = 0, multiple: int = 1, **kwargs):
        """`skip`: leave out the first `skip` batches of the first epoch (resuming mid-epoch
        from a step checkpoint: the data position is (epoch, batches done)). `multiple`: pad
        each batch with all-padding rows to a multiple of this many rows (data parallelism that
        needs an even split, e.g. JAX over N devices; the losses ignore padding)."""
        super().__init__(**kwargs)
        self.multiple = max(1, int(multiple))
        self.rows, self.batch_size, self.width = rows, batch_size, width
        self.buckets = [b for b in buckets if b < width]
        self.seed, self.time_buckets = seed, time_buckets
        keep = rows.lengths >= 2
        self.index = np.flatnonzero(keep)
        self.first_epoch, self.first_skip = epoch, skip
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches = epoch_batches(self.rows.lengths[self.index], self.batch_size, self.buckets,
                                     self.width, self.seed, epoch)
        if epoch == self.first_epoch and self.first_skip:
            self.batches = self.batches[self.first_skip:]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i):
        idx = self.index[self.batches[i]]
        lens = np.minimum(self.rows.lengths[idx], self.width)
        w = bucket_width(int(lens.max()), self.buckets, self.width)
        batch = pad_batch(self.rows, idx, w, time_buckets=self.time_buckets)
        extra = -len(idx) % self.multiple
        if extra:
            batch = {k: np.concatenate([v, np.zeros((extra,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        return batch

    def on_epoch_end(self):
        # Keras calls this after every epoch (JAX path); the tf.data path sets epochs itself.
        self.set_epoch(self.epoch + 1)


def eval_batches(rows: Rows, batch_size: int, width: int, buckets: Sequence[int],
                 time_buckets: int) -> Iterator[tuple]:
    """(row indices, history batch) for every row with >= 2 behaviors; target = last behavior."""
    eligible = np.flatnonzero(rows.lengths >= 2)
    hist_len = rows.lengths[eligible] - 1
    for b in epoch_batches(hist_len, batch_size, [x for x in buckets if x < width], width, 0, 0,
                           shuffle=False):
        idx = eligible[b]
        w = bucket_width(int(min(hist_len[b].max(), width)), [x for x in buckets if x < width], width)
        yield idx, pad_batch(rows, idx, w, ends=rows.lengths[idx] - 1, time_buckets=time_buckets)


def user_batches(rows: Rows, batch_size: int, width: int, buckets: Sequence[int],
                 time_buckets: int) -> Iterator[tuple]:
    """(row indices, whole-sequence batch) for embedding every user (export)."""
    eligible = np.flatnonzero(rows.lengths >= 1)
    for b in epoch_batches(rows.lengths[eligible], batch_size, [x for x in buckets if x < width], width,
                           0, 0, shuffle=False):
        idx = eligible[b]
        w = bucket_width(int(min(rows.lengths[idx].max(), width)), [x for x in buckets if x < width], width)
        yield idx, pad_batch(rows, idx, w, time_buckets=time_buckets)
