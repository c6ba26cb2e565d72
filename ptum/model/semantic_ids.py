"""Semantic IDs: residual quantization of item content vectors into short code tuples
(TIGER, Rajput et al. 2023), so that similar items share code prefixes.

`residual_kmeans` learns L codebooks of K codes: level 1 clusters the vectors, level 2 the
residuals left by level 1, and so on; an item's code tuple is its nearest code at each level.
Items whose L codes coincide get one more token that tells them apart (their rank among the
items sharing the tuple, in token-id order), so every item has a unique tuple.

numpy only and deterministic: k-means++ seeding and Lloyd iterations from one seeded
generator, ties broken by the lowest index. A code that loses all its points is restarted on
the point farthest from its centroid (dead-code restarts), so codebooks stay in use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np


@dataclass
class Quantized:
    codebooks: List[np.ndarray]     # per level [K_l, dim]
    codes: np.ndarray               # [n, L] code per level
    dedup: np.ndarray               # [n] the collision-breaking last token
    restarts: List[int]             # dead codes restarted, per level


def _sq_distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50):
    """(centroids [k, d], assignment [n], restarts): k-means++ then Lloyd until the assignment
    stops changing or `iters` rounds; k is capped at the number of distinct points."""
    x = np.asarray(x, np.float64)
    k = int(min(k, len(np.unique(x, axis=0))))
    first = int(rng.integers(len(x)))
    centroids = [x[first]]
    d2 = _sq_distances(x, x[first][None])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        nxt = int(rng.choice(len(x), p=d2 / total)) if total > 0 else int(np.argmax(d2))
        centroids.append(x[nxt])
        d2 = np.minimum(d2, _sq_distances(x, x[nxt][None])[:, 0])
    c = np.stack(centroids)
    assign = np.full(len(x), -1)
    restarts = 0
    for _ in range(iters):
        dist = _sq_distances(x, c)
        new = np.argmin(dist, axis=1)
        counts = np.bincount(new, minlength=k)
        dead = np.flatnonzero(counts == 0)
        if len(dead):
            # Restart each dead code on the point farthest from its own centroid.
            far = np.argsort(-dist[np.arange(len(x)), new], kind="stable")
            for j, p in zip(dead, far[: len(dead)]):
                c[j] = x[p]
                new[p] = j
            restarts += len(dead)
            counts = np.bincount(new, minlength=k)
        if np.array_equal(new, assign):
            break
        assign = new
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        live = counts > 0
        c[live] = sums[live] / counts[live, None]
    return c, np.argmin(_sq_distances(x, c), axis=1), restarts


def residual_kmeans(x: np.ndarray, levels: int = 3, codes: int = 256, seed: int = 0, iters: int = 50) -> Quantized:
    """L levels of k-means on the residuals; codes [n, L] and the collision-breaking token."""
    rng = np.random.default_rng(seed)
    residual = np.asarray(x, np.float64).copy()
    books, cols, restarts = [], [], []
    for _ in range(levels):
        c, a, r = kmeans(residual, codes, rng, iters)
        books.append(c.astype(np.float32))
        cols.append(a)
        restarts.append(r)
        residual = residual - c[a]
    code = np.stack(cols, axis=1).astype(np.int64)
    return Quantized(books, code, dedup_tokens(code), restarts)


def assign_codes(codebooks: List[np.ndarray], x: np.ndarray) -> np.ndarray:
    """[n, L] codes of new vectors under learned codebooks: the nearest code at each level, on
    the residual the levels before it left (how an item seen after training gets its tuple)."""
    residual = np.asarray(x, np.float64).copy()
    cols = []
    for book in codebooks:
        a = np.argmin(_sq_distances(residual, np.asarray(book, np.float64)), axis=1)
        cols.append(a)
        residual = residual - book[a]
    return np.stack(cols, axis=1).astype(np.int64) if cols else np.zeros((len(residual), 0), np.int64)


def dedup_tokens(codes: np.ndarray) -> np.ndarray:
    """Per row, its rank among the rows with the same code tuple (0 for a unique tuple)."""
    n = len(codes)
    order = np.lexsort(codes.T[::-1])   # stable: equal tuples keep row order
    ranked = codes[order]
    first = np.ones(n, bool)
    first[1:] = (ranked[1:] != ranked[:-1]).any(axis=1)
    starts = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    out = np.empty(n, np.int64)
    out[order] = np.arange(n) - starts
    return out


def dedup_fitted_first(codes: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """dedup_tokens with the `fit` rows ranked before the others sharing their tuple: new rows
    coded after the codebooks were learned take the next free tokens, so no fitted row's tuple
    changes."""
    order = np.concatenate([np.flatnonzero(fit), np.flatnonzero(~fit)])
    out = np.empty(len(codes), np.int64)
    out[order] = dedup_tokens(codes[order])
    return out


def reconstruct(q: Quantized, levels: int) -> np.ndarray:
    """The sum of the first `levels` codewords of every row."""
    out = np.zeros((len(q.codes), q.codebooks[0].shape[1]), np.float64)
    for level in range(levels):
        out += q.codebooks[level][q.codes[:, level]]
    return out


def quantizer_report(x: np.ndarray, q: Quantized) -> dict:
    """Per level: codes used of K, perplexity of the code distribution, relative reconstruction
    error with the levels so far; the share of items whose L-code tuple collides, and the
    largest group that shares one."""
    x = np.asarray(x, np.float64)
    energy = float((x * x).sum()) or 1.0
    levels = []
    for level, book in enumerate(q.codebooks):
        counts = np.bincount(q.codes[:, level], minlength=len(book))
        p = counts[counts > 0] / counts.sum()
        err = float(((x - reconstruct(q, level + 1)) ** 2).sum()) / energy
        levels.append({"level": level + 1, "codes": int(len(book)), "used": int((counts > 0).sum()),
                       "utilisation": float((counts > 0).mean()), "perplexity": float(np.exp(-(p * np.log(p)).sum())),
                       "relative_reconstruction_error": err, "dead_code_restarts": int(q.restarts[level])})
    _, group = np.unique(q.codes, axis=0, return_counts=True)
    return {"levels": levels, "items": int(len(x)),
            "collision_rate": float((group[group > 1]).sum() / max(len(x), 1)),
            "largest_collision_group": int(group.max()) if len(group) else 0,
            "dedup_tokens": int(q.dedup.max()) + 1 if len(q.dedup) else 0}
