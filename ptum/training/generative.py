"""What a generative retrieval model spells each item as (generative.codes), for training.

  semantic   the item's Semantic IDs from a `ptum semantic-ids` artifact of the same
             vocabulary (L levels + the collision token); items the artifact has no code for
             cannot be targets or be returned (counted in the model's metadata). With
             generative.catalog_items the catalog's items without events follow the vocabulary
             (token ids num_item_tokens + j, contracts.catalog_only_items) with the codes the
             artifact gave them from their content: never a target, but the trie holds them
  item_id    the item token itself, one decoding step over the whole catalog
  random     a seeded random tuple of random_levels x random_codes per item, plus the token
             that breaks collisions (TIGER's ablation: the same shape without the content)
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ptum.data import contracts
from ptum.model.semantic_ids import dedup_tokens
from ptum.training.runtime import TrainingError


def item_codes(cfg, ds: contracts.SequenceDataset) -> Tuple[np.ndarray, dict]:
    """(codes [num_item_tokens, D] int32, -1 where an item has none; what they are)."""
    g, n = cfg.generative, ds.num_item_tokens
    codes = np.full((n, 1), -1, np.int64)
    real = np.arange(contracts.FIRST_ITEM_ID, n)
    info = {"codes": g.codes}
    if g.codes == "item_id":
        codes[real, 0] = real - contracts.FIRST_ITEM_ID
    elif g.codes == "random":
        rng = np.random.default_rng([cfg.train.seed, 7])
        drawn = rng.integers(0, g.random_codes, size=(len(real), g.random_levels))
        codes = np.full((n, g.random_levels + 1), -1, np.int64)
        codes[real] = np.concatenate([drawn, dedup_tokens(drawn)[:, None]], axis=1)
        info.update(levels=g.random_levels, codes_per_level=g.random_codes, seed=cfg.train.seed)
    else:
        codes, more = _semantic(g.semantic_ids, ds, g.catalog_items)
        info.update(more)
    coded = int((codes[real] >= 0).all(axis=1).sum()) if len(real) else 0
    info.update(tuple_length=int(codes.shape[1]), items=len(real), items_coded=coded)
    if g.catalog_items:
        info.update(catalog_items=int(codes.shape[0] - n), catalog_items_coded=int((codes[n:] >= 0).all(axis=1).sum()),
                    catalog_items_epsilon=g.catalog_items_epsilon)
    if coded == 0:
        raise TrainingError(f"{ds.root}: no item has a code ({g.codes}); nothing to decode")
    return codes.astype(np.int32), info


def _semantic(path: str, ds: contracts.SequenceDataset, catalog_items: bool = False):
    from ptum.training.semantic_ids import SemanticIdError, read_semantic_ids

    try:
        table, manifest = read_semantic_ids(path)
    except SemanticIdError as e:
        raise TrainingError(f"generative.semantic_ids: {e}") from None
    made_on = manifest.get("dataset", {}).get("vocab_hash")
    if made_on != ds.vocab_hash:
        raise TrainingError(f"generative.semantic_ids {path}: learned on vocabulary {made_on}, the dataset has "
                            f"{ds.vocab_hash}; run ptum semantic-ids on this dataset")
    tokens = np.asarray(table.column("token_id").to_numpy(), np.int64)
    tuples = np.asarray(table.column("codes").to_pylist(), np.int64)
    n = ds.num_item_tokens
    extra = contracts.catalog_only_items(ds.read_vocab_table(contracts.CATALOG)) if catalog_items else []
    codes = np.full((n + len(extra), tuples.shape[1]), -1, np.int64)
    ok = (tokens >= contracts.FIRST_ITEM_ID) & (tokens < n + len(extra))
    names = table.column("item_id").to_pylist()
    for row in np.flatnonzero(ok & (tokens >= n)):
        if names[row] != extra[tokens[row] - n]:
            raise TrainingError(f"generative.semantic_ids {path}: token {tokens[row]} is {names[row]!r} there but "
                                f"{extra[tokens[row] - n]!r} in the dataset's catalog; run ptum semantic-ids on "
                                "this dataset")
    codes[tokens[ok]] = tuples[ok]
    return codes, {"semantic_ids": path, "semantic_ids_created": manifest.get("created"),
                   "semantic_ids_parameters": manifest.get("parameters")}
