"""Vocabularies: items (min-count, OOV), behaviors, title words of the item catalog; frozen
vocabularies of an earlier dataset (`--vocab-from`).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ptum.data import contracts

from ptum.data.ingest.plan import TokenizeOptions


def build_item_vocab(item_counts: pa.Table, min_count: int) -> pa.Table:
    """Items with count >= min_count get token ids FIRST_ITEM_ID.. in (count desc, id) order."""
    t = item_counts.filter(pc.greater_equal(item_counts.column("count"), min_count))
    t = t.sort_by([("count", "descending"), ("key", "ascending")])
    n = t.num_rows
    return pa.table({
        "item_id": t.column("key"),
        "token_id": pa.array(np.arange(contracts.FIRST_ITEM_ID, contracts.FIRST_ITEM_ID + n, dtype=np.int32)),
        "count": t.column("count"),
    })


def build_behavior_vocab(behavior_counts: pa.Table) -> pa.Table:
    t = behavior_counts.sort_by([("count", "descending"), ("key", "ascending")])
    return pa.table({
        "behavior": t.column("key"),
        "behavior_id": pa.array(np.arange(contracts.FIRST_BEHAVIOR_ID,
                                          contracts.FIRST_BEHAVIOR_ID + t.num_rows, dtype=np.int32)),
        "count": t.column("count"),
    })


def frozen_behavior_vocab(dataset_dir: str, behavior_counts: pa.Table) -> pa.Table:
    """Reuse another dataset's behavior vocabulary: behavior types it lacks map to
    BEHAVIOR_UNKNOWN_ID (counted as oov_behavior_events), never to new ids."""
    v = contracts.open_dataset(dataset_dir).read_vocab_table(contracts.BEHAVIORS_VOCAB)
    if v is None:
        v = build_behavior_vocab(behavior_counts.schema.empty_table())
    idx = pc.index_in(v.column("behavior"), value_set=behavior_counts.column("key"))
    c = (pc.take(behavior_counts.column("count"), idx) if behavior_counts.num_rows
         else pa.nulls(v.num_rows, pa.int64()))
    return pa.table({"behavior": v.column("behavior"), "behavior_id": v.column("behavior_id"),
                     "count": pc.fill_null(c, 0)})


def behavior_vocab_for(behavior_counts: pa.Table, opts: "TokenizeOptions") -> pa.Table:
    if opts.vocab_from:
        return frozen_behavior_vocab(opts.vocab_from, behavior_counts)
    return build_behavior_vocab(behavior_counts)


def frozen_word_ids(dataset_dir: Optional[str]) -> Optional[Dict[str, int]]:
    """The title-word vocabulary of another dataset (word -> id), or None."""
    if not dataset_dir:
        return None
    v = contracts.open_dataset(dataset_dir).read_vocab_table(contracts.WORDS_VOCAB)
    if v is None:
        return {}
    return dict(zip(v.column("word").to_pylist(), v.column("word_id").to_pylist()))


def frozen_vocab(dataset_dir: str, item_counts: pa.Table) -> pa.Table:
    """Reuse another dataset's item vocabulary (same ids -> same vocab hash); counts are this run's."""
    ds = contracts.open_dataset(dataset_dir)
    v = ds.read_items_vocab()
    counts = pc.index_in(v.column("item_id"), value_set=item_counts.column("key"))
    c = pc.take(item_counts.column("count"), counts) if item_counts.num_rows else pa.nulls(v.num_rows, pa.int64())
    return pa.table({"item_id": v.column("item_id"), "token_id": v.column("token_id"),
                     "count": pc.fill_null(c, 0)})


def tokenize_words(titles: Sequence[str]) -> List[List[str]]:
    return [re.findall(r"[0-9a-z]+", (t or "").lower()) for t in titles]


def build_catalog(catalog: Optional[pa.Table], items_vocab: pa.Table, min_word_count: int,
                  max_title_words: int, frozen_words: Optional[Dict[str, int]] = None
                  ) -> Tuple[Optional[pa.Table], Optional[pa.Table]]:
    """(catalog with token ids and title word ids, word vocabulary) or (None, None).
    `frozen_words` (word -> id, from --vocab-from): reuse those ids; other words are OOV."""
    if catalog is None or catalog.num_rows == 0:
        return None, None
    words = tokenize_words(catalog.column("title").to_pylist())
    counts: Dict[str, int] = {}
    for ws in words:
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
    if frozen_words is not None:
        word_id = dict(frozen_words)
        kept = sorted(word_id, key=lambda w: word_id[w])
    else:
        kept = sorted((w for w, c in counts.items() if c >= min_word_count), key=lambda w: (-counts[w], w))
        word_id = {w: i + contracts.FIRST_WORD_ID for i, w in enumerate(kept)}
    word_ids = [[word_id.get(w, contracts.WORD_OOV_ID) for w in ws[:max_title_words]] for ws in words]
    idx = pc.index_in(catalog.column("item_id"), value_set=items_vocab.column("item_id"))
    token = pc.fill_null(pc.take(items_vocab.column("token_id"), idx), -1)
    cat = pa.table({
        "item_id": catalog.column("item_id"),
        "token_id": pc.cast(token, pa.int32()),
        "title": catalog.column("title"),
        "categories": catalog.column("categories"),
        "word_ids": pa.array(word_ids, pa.list_(pa.int32())),
    })
    vocab = pa.table({"word": pa.array(kept, pa.string()),
                      "word_id": pa.array([word_id[w] for w in kept], pa.int32()),
                      "count": pa.array([counts.get(w, 0) for w in kept], pa.int64())})
    return cat, vocab


def items_vocab_for(item_counts: pa.Table, opts: TokenizeOptions) -> pa.Table:
    if opts.vocab_from:
        return frozen_vocab(opts.vocab_from, item_counts)
    return build_item_vocab(item_counts, opts.min_item_count)
