"""`ptum cold-start`: how well items never seen in training are recommended (TIGER's cold-start
setting), in one command.

1. New items: a seeded share (`share`, TIGER: 5%) of the distinct items that are some user's
   test target. Every behavior on them is removed from the train and valid rows, so no model
   sees them trained on (they stay in the vocabulary and may appear in test histories).
2. The id model (`id_config`) trained with `pretrain_rows` on the filtered rows.
3. Semantic IDs learned on the other items, from their content joined with that id model's
   item embeddings (as `ptum semantic-ids --model`, `collaborative_weight`; content alone with
   `id_config=None` or `collaborative_weight=0`); a
   new item's collaborative half is predicted from its content by a ridge map learned on the
   others, and it gets the nearest codes of those codebooks (`learn_semantic_ids(new_items=...)`).
4. The generative model (`config`, codes: those Semantic IDs) trained on the filtered rows.
5. On the test users whose target is a new item ("cold"): Recall/NDCG@K (history items left
   out) of
   - the generative model's beam, the list holding at most floor(epsilon * K) new items
     (TIGER's epsilon; at least one), and without the cap; the decoder never saw a new item as a
     target, so its beam rarely reaches one: as TIGER does, a new item whose semantic codes (the
     tuple without its collision token) equal those of an item the beam generated joins the list
     right after it (capped), and the same with one code fewer (a coarser match);
   - content KNN: every item ranked by the cosine of its content vector with the user's last
     item's (the vectors the Semantic IDs were learned from), with and without the same cap;
   - the id model (the new items' embeddings were never trained: it cannot reach them).
   On the other test users ("warm", targets seen in training) the same lists: what the cap
   costs the users whose next item is not new.
Writes <output>/semantic_ids/, generative/, id_model/, report.json and report.md.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ptum import fs
from ptum.data import contracts
from ptum.data.batches import Rows, eval_batches

KS = (5, 10)


def pick_new_items(test: Rows, share: float, seed: int) -> np.ndarray:
    """A seeded `share` of the distinct real items that are a test target (at least one)."""
    targets = test.items[test.offsets[1:] - 1]
    pool = np.unique(targets[targets >= contracts.FIRST_ITEM_ID])
    if len(pool) == 0:
        raise ValueError("the test split has no target item to hold out")
    n = max(1, int(round(share * len(pool))))
    rng = np.random.default_rng([seed, 11])
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False)).astype(np.int64)


def capped_metrics(items: np.ndarray, kept: np.ndarray, targets: np.ndarray, new: np.ndarray,
                   cap: Optional[int], ks: Sequence[int] = KS) -> Dict[str, np.ndarray]:
    """Per-row hits and gains of ranked lists `items` [B, L] (best first; `kept`: the slots
    that may be shown): with `cap`, a new item (`new` [B, L]) past the cap-th is dropped from
    the list, and the items after it move up."""
    from ptum.evaluation.generative import cap_new_items, list_metrics

    return list_metrics(items, cap_new_items(kept, new, cap), targets, ks)


def _history_mask(rows: Rows, idx: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[B, L] bool: the item is among the row's behaviors before its last (not its target)."""
    from ptum.evaluation.generative import in_history

    targets = rows.items[rows.offsets[idx + 1] - 1]
    return in_history(rows, idx, items) & (items != targets[:, None])


def _ranked(scores: np.ndarray, depth: int = 200) -> np.ndarray:
    """[B, depth] the best-scored item tokens of each row, best first."""
    d = min(depth, scores.shape[1])
    top = np.argpartition(-scores, d - 1, axis=1)[:, :d]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1).astype(np.int64)


class _Lists:
    """Per-user metrics of several rankers, averaged over the cold and the warm users."""

    def __init__(self, cold_users: np.ndarray):
        self.cold = cold_users
        self.parts: Dict[tuple, List[np.ndarray]] = {}

    def add(self, name: str, idx: np.ndarray, per_row: Dict[str, np.ndarray]) -> None:
        for group, mask in (("cold", self.cold[idx]), ("warm", ~self.cold[idx])):
            for metric, v in per_row.items():
                self.parts.setdefault((group, name, metric), []).append(v[mask])

    def result(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        out: Dict[str, Dict[str, Dict[str, float]]] = {}
        for (group, name, metric), parts in self.parts.items():
            v = np.concatenate(parts)
            out.setdefault(group, {}).setdefault(name, {})[metric] = float(v.mean()) if len(v) else 0.0
        return out


def with_prefix_matches(items: np.ndarray, scores: np.ndarray, codes: np.ndarray, new_tokens: np.ndarray,
                        m: int, max_members: Optional[int] = None):
    """TIGER's cold-start retrieval (ptum.model.generative.merge_prefix_matches, which the served
    signatures run too): a new item whose first `m` codes equal those of an item the beam
    generated joins the list just below it, at most `max_members` per generated item. Returns
    the merged lists (items, scores) [B, L'], best first, -1 pads."""
    import keras

    from ptum.model.generative import merge_prefix_matches, prefix_groups

    groups = prefix_groups(codes, new_tokens, m, max_members or max(len(new_tokens), 1))
    got, sc = (np.asarray(keras.ops.convert_to_numpy(x)) for x in merge_prefix_matches(items, scores, groups))
    width = int((got >= contracts.FIRST_ITEM_ID).sum(axis=1).max(initial=0))
    return got[:, :width].astype(np.int64), sc[:, :width].astype(np.float64)


def _generative_lists(model, rows: Rows, width: int, buckets, beam: int, batch: int, new_tokens: np.ndarray,
                      cap: int, lists: _Lists) -> None:
    import keras

    from ptum.evaluation.generative import beam_function, history_exclusion

    search = beam_function(model, beam, excluding=True)    # the history left out inside the search
    codes = np.asarray(keras.ops.convert_to_numpy(model.item_codes.value)).astype(np.int64)
    semantic = codes.shape[1] - 1          # the codes before the collision token
    for idx, b in eval_batches(rows, batch, width, buckets, 0):
        items, scores = search(b["item_ids"], history_exclusion(rows, idx))
        targets = rows.items[rows.offsets[idx + 1] - 1].astype(np.int64)
        lists_of = [("generative", items)]
        for name, m in (("generative_prefix", semantic), ("generative_prefix_coarse", semantic - 1)):
            if m >= 1:
                lists_of.append((name, with_prefix_matches(items, scores, codes, new_tokens, m, cap)[0]))
        for name, got in lists_of:
            kept = (got >= contracts.FIRST_ITEM_ID) & ~_history_mask(rows, idx, got)
            new = np.isin(got, new_tokens)
            if name == "generative":
                lists.add(name, idx, capped_metrics(got, kept, targets, new, None))
            lists.add(f"{name}_capped", idx, capped_metrics(got, kept, targets, new, cap))


def _knn_lists(vectors: np.ndarray, rows: Rows, new_tokens: np.ndarray, cap: int, lists: _Lists,
               batch: int = 512, depth: int = 200) -> None:
    """Content KNN from the user's last history item (its cosine with every item)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    unit[: contracts.FIRST_ITEM_ID] = 0.0
    ends = rows.offsets[1:] - 1
    for lo in range(0, len(rows), batch):
        idx = np.arange(lo, min(lo + batch, len(rows)))
        has_history = ends[idx] > rows.offsets[idx]
        last = rows.items[np.maximum(ends[idx] - 1, rows.offsets[idx])]
        scores = unit[last] @ unit.T
        scores[:, : contracts.FIRST_ITEM_ID] = -np.inf
        scores[~has_history] = -np.inf
        items = _ranked(scores, depth)
        finite = np.isfinite(np.take_along_axis(scores, items, axis=1))
        targets = rows.items[ends[idx]].astype(np.int64)
        kept = finite & ~_history_mask(rows, idx, items)
        new = np.isin(items, new_tokens)
        lists.add("content_knn", idx, capped_metrics(items, kept, targets, new, None))
        lists.add("content_knn_capped", idx, capped_metrics(items, kept, targets, new, cap))


def _id_model_lists(model_dir: str, rows: Rows, new_tokens: np.ndarray, lists: _Lists, batch: int = 512,
                    depth: int = 200) -> None:
    """The id model's full-catalog ranking (as `ptum evaluate` scores it)."""
    import keras

    from ptum.evaluation.ranking import UserEmbedder, item_table_numpy
    from ptum.model.saving import load_model_dir

    encoder, meta, cfg = load_model_dir(model_dir)
    embedder = UserEmbedder(encoder)
    table = item_table_numpy(encoder)
    for idx, b in eval_batches(rows, batch, meta["max_len"], meta["length_buckets"], meta["time_buckets"]):
        users = np.asarray(keras.ops.convert_to_numpy(embedder.predict_on_batch(b)), np.float32)
        scores = users @ table.T
        scores[:, : contracts.FIRST_ITEM_ID] = -np.inf
        items = _ranked(scores, depth)
        targets = rows.items[rows.offsets[idx + 1] - 1].astype(np.int64)
        kept = ~_history_mask(rows, idx, items)
        lists.add("id_model", idx, capped_metrics(items, kept, targets, np.isin(items, new_tokens), None))


def cold_start(data: str, output: str, *, config: str = "beauty-generative", overrides: Sequence[str] = (),
               id_config: Optional[str] = "beauty", id_overrides: Sequence[str] = (), share: float = 0.05,
               epsilon: float = 0.1, seed: int = 0, attributes: Optional[str] = None, vectors: Optional[str] = None,
               vector_column: str = "vector", levels: int = 3, codes: int = 256, dim: int = 64,
               quantizer: str = "kmeans", collaborative_weight: float = 1.0,
               log: Callable[[str], None] = print) -> dict:
    """Run the whole evaluation (module doc); returns the report (also written to `output`)."""
    from ptum.config import ConfigError, PTUMConfig
    from ptum.data.item_content import item_content
    from ptum.evaluation.generative import catalog_cap
    from ptum.model.saving import load_model_dir
    from ptum.training.pretrain import pretrain_rows
    from ptum.training.semantic_ids import learn_semantic_ids

    if not 0.0 < share <= 1.0 or not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"--share {share} must be in (0, 1] and --epsilon {epsilon} in [0, 1]")
    ds = contracts.open_dataset(data)
    test = Rows.from_split(ds, "test")
    new_tokens = pick_new_items(test, share, seed)
    full = {split: Rows.from_split(ds, split) for split in ("train", "valid")}
    train, valid = (full[split].without_items(new_tokens) for split in ("train", "valid"))
    # Every behavior accounted for: what the filter removed, per split (rows left empty dropped).
    removed = {split: {"behaviors": len(full[split].items) - len(kept.items), "rows": len(full[split]) - len(kept)}
               for split, kept in (("train", train), ("valid", valid))}
    cold = np.isin(test.items[test.offsets[1:] - 1], new_tokens)
    log(f"cold start: {len(new_tokens):,} new items (share {share} of the test targets' items), "
        f"{int(cold.sum()):,} of {len(test):,} test users have one as their target; their events are removed "
        "from the train and valid rows")
    sid_dir, gen_dir = os.path.join(output, "semantic_ids"), os.path.join(output, "generative")
    id_dir = os.path.join(output, "id_model") if id_config is not None else None
    gen_cfg = PTUMConfig.load(config, [*overrides, "model.architecture=generative", "generative.codes=semantic",
                                       f"generative.semantic_ids={sid_dir}"])
    id_cfg = PTUMConfig.load(id_config, list(id_overrides)) if id_config is not None else None
    if id_cfg is not None and id_cfg.model.architecture == "generative":
        raise ConfigError(f"--id-config {id_config}: needs the id model (model.architecture ptum), not generative")
    k = max(KS)
    cap = catalog_cap(k, epsilon)
    if gen_cfg.generative.beam_size < k:
        raise ConfigError(f"generative.beam_size {gen_cfg.generative.beam_size} < {k}: the lists need {k} items")
    # The Semantic IDs' settings too: the generative model resumes with the codes it began with.
    _check_plan(output, {"vocab_hash": ds.vocab_hash, "share": share, "seed": seed, "new_items": new_tokens.tolist(),
                         "semantic_ids": {"attributes": attributes, "vectors": vectors, "vector_column": vector_column,
                                          "levels": levels, "codes": codes, "dim": dim, "quantizer": quantizer,
                                          "collaborative_weight": collaborative_weight}})
    if id_dir:
        pretrain_rows(ds, train, valid, id_dir, id_cfg, log=log)
    sid = learn_semantic_ids(data, sid_dir, attributes=attributes, vectors=vectors, vector_column=vector_column,
                             model=id_dir, collaborative_weight=collaborative_weight, levels=levels, codes=codes,
                             dim=dim, seed=seed, quantizer=quantizer,
                             new_items=new_tokens.tolist(), log=log)
    pretrain_rows(ds, train, valid, gen_dir, gen_cfg, log=log)
    lists = _Lists(cold)
    model, meta, cfg = load_model_dir(gen_dir, generative=True)
    _generative_lists(model, test, meta["max_len"], meta["length_buckets"], cfg.generative.beam_size,
                      cfg.train.eval_batch_size, new_tokens, cap, lists)
    content = item_content(ds, attributes, vectors, vector_column, dim=dim, seed=seed)
    vecs = np.zeros((ds.num_item_tokens, content.vectors.shape[1]), np.float64)
    vecs[content.token_ids] = content.vectors
    _knn_lists(vecs, test, new_tokens, cap, lists)
    if id_dir:
        _id_model_lists(id_dir, test, new_tokens, lists)
    report = {"data": ds.root, "vocab_hash": ds.vocab_hash, "quantizer": quantizer,
              "collaborative_weight": collaborative_weight if id_dir else None, "share": share, "epsilon": epsilon, "k": k,
              "new_items_cap": cap, "seed": seed, "new_items": int(len(new_tokens)),
              "users": {"cold": int(cold.sum()), "warm": int((~cold).sum())}, "removed_from_training": removed,
              "semantic_ids": {"path": sid_dir, "counts": sid["counts"], "new_items": _new_item_info(sid_dir)},
              "models": {"generative": gen_dir, "id_model": id_dir},
              "config": config, "overrides": list(overrides), "id_config": id_config,
              "id_overrides": list(id_overrides), **lists.result()}
    contracts.write_json_atomic(os.path.join(output, "report.json"), report)
    fs.write_bytes(os.path.join(output, "report.md"), markdown(report).encode("utf-8"))
    return report


def _check_plan(output: str, plan: dict) -> None:
    """The models under `output` resume from their checkpoints when the command runs again;
    that is only right for the same held-out items (else a model could have trained on the
    new items of another run): a folder holding another plan is refused."""
    import json

    path = os.path.join(output, "plan.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        if before != plan:
            changed = sorted(k for k in plan if before.get(k) != plan[k])
            raise ValueError(f"{output}: holds a cold-start run with other held-out items or codes "
                             f"({', '.join(changed)} differ); use a new --output")
        return
    os.makedirs(output, exist_ok=True)
    contracts.write_json_atomic(path, plan)


def _new_item_info(sid_dir: str) -> dict:
    import json

    with open(os.path.join(sid_dir, "report.json")) as f:
        return json.load(f).get("new_items", {})


NAMES = {"generative_capped": "generative (Semantic IDs), new items capped",
         "generative": "generative (Semantic IDs), no cap",
         "generative_prefix_capped": "generative + new items matching a generated item's semantic codes (TIGER), capped",
         "generative_prefix_coarse_capped": "generative + new items matching its codes but the last, capped",
         "content_knn_capped": "content KNN (last item), capped", "content_knn": "content KNN (last item), no cap",
         "id_model": "id model"}


def markdown(report: dict) -> str:
    lines = ["# Cold start", "",
             f"{report['new_items']:,} new items (share {report['share']} of the test targets' items, seed "
             f"{report['seed']}) never seen in training; {report['users']['cold']:,} test users have one as their "
             f"target (cold), {report['users']['warm']:,} do not (warm). Capped lists hold at most "
             f"{report['new_items_cap']} new item(s) in the top {report['k']} (epsilon {report['epsilon']}). "
             "History items left out, full catalog.", ""]
    for group in ("cold", "warm"):
        rows = report.get(group, {})
        lines += [f"## {group} users", "", "| ranker | Recall@5 | Recall@10 | NDCG@5 | NDCG@10 |", "|---|---|---|---|---|"]
        for name, label in NAMES.items():
            if name in rows:
                m = rows[name]
                lines.append(f"| {label} | {m['recall@5']:.4f} | {m['recall@10']:.4f} | {m['ndcg@5']:.4f} | "
                             f"{m['ndcg@10']:.4f} |")
        lines.append("")
    return "\n".join(lines)
