"""Retrieval from the exported files, as a downstream team does it: an inner-product ANN index
(faiss HNSW) over the export's item table (`items.parquet`: `retrieval_vector` = [embedding,
bias]) queried with [user embedding, 1], against the exact inner product over the same files,
which is the model's own score (ptum.serving.export_embeddings, tested). Reports how much of the
exact top-k the index returns (agreement), with the user's own history left out of both
lists when it is known, and the cost of each.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Sequence

import numpy as np


class RetrievalError(ValueError):
    pass


def _faiss():
    try:
        import faiss
    except ImportError:
        raise RetrievalError("the ANN check needs faiss-cpu (it is in both locks: make setup)") from None
    return faiss


def exact_index(vectors: np.ndarray):
    faiss = _faiss()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, np.float32))
    return index


def hnsw_index(vectors: np.ndarray, m: int = 32, ef_construction: int = 200, ef_search: int = 128):
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    index.add(np.ascontiguousarray(vectors, np.float32))
    return index


def search(index, queries: np.ndarray, k: int, item_ids: Sequence[str],
           history: Optional[Sequence[set]] = None) -> np.ndarray:
    """[n, k] item positions, best first; each user's `history` items left out (-1 pads)."""
    most = max((len(h) for h in history), default=0) if history is not None else 0
    _, found = index.search(np.ascontiguousarray(queries, np.float32), min(k + most, len(item_ids)))
    if history is None:
        return found[:, :k]
    out = np.full((len(queries), k), -1, np.int64)
    for row, (cands, seen) in enumerate(zip(found, history)):
        kept = [c for c in cands if c >= 0 and item_ids[c] not in seen][:k]
        out[row, : len(kept)] = kept
    return out


def ann_check(user_vectors: np.ndarray, item_ids: Sequence[str], item_vectors: np.ndarray,
              history: Optional[Sequence[set]] = None, k: int = 10) -> Dict[str, float]:
    """Agreement@k of the HNSW index with the exact inner product, and their timings."""
    queries = np.hstack([user_vectors, np.ones((len(user_vectors), 1), np.float32)]).astype(np.float32)
    t0 = time.perf_counter()
    exact = exact_index(item_vectors)
    t1 = time.perf_counter()
    ann = hnsw_index(item_vectors)
    t2 = time.perf_counter()
    want = search(exact, queries, k, item_ids, history)
    t3 = time.perf_counter()
    got = search(ann, queries, k, item_ids, history)
    t4 = time.perf_counter()
    overlap = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(int((b >= 0).sum()), 1) for a, b in zip(got, want)]
    return {f"ann_agreement@{k}": float(np.mean(overlap)) if overlap else 0.0,
            "index": "faiss HNSW (M 32, efConstruction 200, efSearch 128), inner product",
            "items": int(len(item_ids)), "users": int(len(user_vectors)), "history_filtered": history is not None,
            "exact_build_seconds": round(t1 - t0, 4), "ann_build_seconds": round(t2 - t1, 4),
            "exact_queries_per_second": round(len(queries) / max(t3 - t2, 1e-9), 1),
            "ann_queries_per_second": round(len(queries) / max(t4 - t3, 1e-9), 1)}


def window_recall(user_vectors: np.ndarray, item_ids: Sequence[str], item_vectors: np.ndarray,
                  history: Sequence[set], targets: Sequence[set], k: int = 10) -> Dict[str, float]:
    """Recall@k of the future window from the exported item table: each user embedded at the
    cut before its window, its top-k (history left out) from the exact inner product and from
    the HNSW index; recall = |top-k ∩ window items| / |window items| (users whose window holds
    only items of their history are not counted)."""
    queries = np.hstack([user_vectors, np.ones((len(user_vectors), 1), np.float32)]).astype(np.float32)
    keep = [i for i, t in enumerate(targets) if t]
    out = {"window_users": len(keep)}
    for name, index in (("exact", exact_index(item_vectors)), ("ann", hnsw_index(item_vectors))):
        found = search(index, queries[keep], k, item_ids, [history[i] for i in keep])
        recall = [len({item_ids[c] for c in row if c >= 0} & targets[i]) / len(targets[i])
                  for row, i in zip(found, keep)]
        out[f"window_recall@{k}_{name}"] = float(np.mean(recall)) if recall else 0.0
    return out
