"""Item content vectors for Semantic IDs, from what a dataset's catalog and its side files hold.

Sources, per item token of the dataset's vocabulary (and, when asked, per catalog item without
events):
- the catalog (`vocab/catalog.parquet`): title words and categories;
- an attribute file (`--attributes`): a JSON object item id -> list of attribute ids (the
  layout of Amazon's `*_item2attributes.json`), read as it is;
- precomputed vectors (`--vectors`): a Parquet file with an item id column and a list<float>
  column, e.g. the output of a sentence encoder (the hook for content encoders this project
  cannot download).

Words, categories and attributes become one bag of features per item, weighted by TF-IDF
(sublinear term frequency, l2-normalised rows) and reduced with a truncated SVD: items that
share rare features land near each other. Precomputed vectors, when given, are used as they
are for the items they cover (l2-normalised), beside the feature-bag block. Deterministic for
a fixed seed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ptum import fs
from ptum.data import contracts


class ContentError(ValueError):
    """A content source cannot be used (unreadable, wrong layout, NaN vectors, ...)."""


@dataclass
class ItemContent:
    """Per item token (rows in token-id order): its id, whether any content was found, and
    the content vector (zeros where none)."""
    token_ids: np.ndarray
    item_ids: List[str]
    vectors: np.ndarray
    has_content: np.ndarray
    counts: Dict[str, int] = field(default_factory=dict)
    sources: List[str] = field(default_factory=list)


def dataset_items(ds: contracts.SequenceDataset):
    """(token ids, item ids) of the dataset's item vocabulary, in token-id order (OOV and the
    reserved ids are not items)."""
    vocab = ds.read_vocab_table(contracts.ITEMS_VOCAB)
    order = np.argsort(np.asarray(vocab.column("token_id").to_numpy(), np.int64), kind="stable")
    tokens = np.asarray(vocab.column("token_id").to_numpy(), np.int64)[order]
    ids = [vocab.column("item_id")[int(i)].as_py() for i in order]
    keep = tokens >= contracts.FIRST_ITEM_ID
    return tokens[keep], [i for i, k in zip(ids, keep) if k]


def catalog_features(ds: contracts.SequenceDataset) -> Dict[str, List[str]]:
    """item id -> features from the catalog: `w:<word id>` per title word, `c:<category>`."""
    catalog = ds.read_vocab_table(contracts.CATALOG)
    if catalog is None:
        return {}
    out: Dict[str, List[str]] = {}
    cats = catalog.column("categories").to_pylist() if "categories" in catalog.column_names else None
    for n, (item, words) in enumerate(zip(catalog.column("item_id").to_pylist(),
                                          catalog.column("word_ids").to_pylist())):
        feats = [f"w:{w}" for w in (words or [])]
        if cats is not None and cats[n]:
            feats += [f"c:{c.strip()}" for c in str(cats[n]).split("|") if c.strip()]
        if item is not None:
            out[item] = feats
    return out


def read_attributes(path: str, known: set) -> (Dict[str, List[str]], Dict[str, int]):
    """item id -> `a:<attribute id>` features from a JSON object item id -> list of attribute
    ids; counts items the dataset does not know (ignored) and items with an empty list."""
    try:
        raw = json.loads(fs.read_bytes(path).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ContentError(f"{path}: unreadable attribute file ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(raw, dict):
        raise ContentError(f"{path}: an attribute file is a JSON object item id -> list of attribute ids")
    out, unknown, empty = {}, 0, 0
    for item, attrs in raw.items():
        if not isinstance(attrs, list) or not all(isinstance(a, (int, str)) and not isinstance(a, bool)
                                                  for a in attrs):
            raise ContentError(f"{path}: item {item!r}: attributes must be a list of ids, got {str(attrs)[:60]}")
        if item not in known:
            unknown += 1
            continue
        if not attrs:
            empty += 1
        out[item] = [f"a:{a}" for a in attrs]
    return out, {"attribute_items_unknown": unknown, "attribute_items_empty": empty}


def read_vectors(path: str, column: str, item_column: str, known: set) -> (Dict[str, np.ndarray], Dict[str, int]):
    """item id -> precomputed vector from a Parquet file. NaN or infinite values, rows of
    another length and an item listed twice are errors naming the file, row and column."""
    try:
        table = contracts.read_parquet(path)
    except Exception as e:  # noqa: BLE001 (any reader failure is the file's)
        raise ContentError(f"{path}: unreadable Parquet ({type(e).__name__}: {str(e)[:120]})") from None
    for c in (item_column, column):
        if c not in table.column_names:
            raise ContentError(f"{path}: no column {c!r} (columns: {table.column_names})")
    out, dim, unknown = {}, None, 0
    for row, (item, vec) in enumerate(zip(table.column(item_column).to_pylist(), table.column(column).to_pylist())):
        if item is None or vec is None:
            raise ContentError(f"{path}: row {row}: empty {item_column if item is None else column}")
        item = str(item)
        v = np.asarray(vec, np.float64)
        if v.ndim != 1 or not np.isfinite(v).all():
            raise ContentError(f"{path}: row {row}, column {column!r}: the vector holds NaN or infinite values")
        dim = dim or len(v)
        if len(v) != dim:
            raise ContentError(f"{path}: row {row}, column {column!r}: {len(v)} values where row 0 has {dim}")
        if item in out:
            raise ContentError(f"{path}: row {row}: item {item!r} listed twice")
        if item not in known:
            unknown += 1
            continue
        out[item] = v
    return out, {"vector_items_unknown": unknown}


def tfidf_svd(docs: List[List[str]], dim: int, seed: int) -> np.ndarray:
    """TF-IDF (sublinear tf, smooth idf, l2 rows) of feature bags, reduced to `dim` columns
    by a truncated SVD and l2-normalised; rows without features are zeros."""
    vocab: Dict[str, int] = {}
    rows, cols, vals = [], [], []
    for r, doc in enumerate(docs):
        counts: Dict[int, int] = {}
        for f in doc:
            j = vocab.setdefault(f, len(vocab))
            counts[j] = counts.get(j, 0) + 1
        for j, c in sorted(counts.items()):
            rows.append(r)
            cols.append(j)
            vals.append(1.0 + math.log(c))
    n = len(docs)
    if not vocab:
        return np.zeros((n, 0), np.float32)
    from scipy import sparse

    x = sparse.csr_matrix((vals, (rows, cols)), shape=(n, len(vocab)), dtype=np.float64)
    df = np.bincount(cols, minlength=len(vocab))
    x = _l2_sparse(x @ sparse.diags(np.log((1 + n) / (1 + df)) + 1.0))
    k = min(dim, len(vocab) - 1, n - 1)
    if k < 1 or len(vocab) <= dim:
        return _l2(x.toarray()).astype(np.float32)
    from sklearn.decomposition import TruncatedSVD

    reduced = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed).fit_transform(x)
    return _l2(reduced).astype(np.float32)


def _l2(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x, dtype=np.float64), where=norms > 0)


def _l2_sparse(x):
    from scipy import sparse

    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sparse.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ x


def item_content(ds: contracts.SequenceDataset, attributes: Optional[str] = None, vectors: Optional[str] = None,
                 vector_column: str = "vector", vector_item_column: str = "item_id", dim: int = 64,
                 seed: int = 0, catalog_only: bool = False) -> ItemContent:
    """Content vectors of every item of the dataset's vocabulary (see the module doc);
    `catalog_only`: also of the catalog's items without a token (no events), after them, with
    the token ids contracts.catalog_only_items gives them."""
    tokens, ids = dataset_items(ds)
    counts = {"items": len(ids)}
    if catalog_only:
        extra = contracts.catalog_only_items(ds.read_vocab_table(contracts.CATALOG))
        tokens = np.concatenate([tokens, ds.num_item_tokens + np.arange(len(extra), dtype=np.int64)])
        ids = ids + extra
        counts["catalog_only_items"] = len(extra)
    known = set(ids)
    bags = catalog_features(ds)
    sources = ["catalog"] if bags else []
    if attributes:
        attrs, c = read_attributes(attributes, known)
        counts.update(c)
        sources.append("attributes")
        for item, feats in attrs.items():
            bags[item] = bags.get(item, []) + feats
    docs = [bags.get(i, []) for i in ids]
    x = tfidf_svd(docs, dim, seed) if any(docs) else np.zeros((len(ids), 0), np.float32)
    has = np.array([bool(d) for d in docs])
    if vectors:
        pre, c = read_vectors(vectors, vector_column, vector_item_column, known)
        counts.update(c)
        sources.append("vectors")
        width = len(next(iter(pre.values()))) if pre else 0
        dense = np.zeros((len(ids), width), np.float32)
        for n, item in enumerate(ids):
            if item in pre:
                dense[n] = pre[item]
        covered = np.array([i in pre for i in ids])
        # One vector per item: the precomputed block beside the feature-bag block (each
        # l2-normalised; a block is zeros where its source says nothing about the item).
        x = np.concatenate([_l2(dense), x], axis=1) if x.shape[1] else _l2(dense)
        has = has | covered
        counts["items_with_vectors"] = int(covered.sum())
    counts["items_with_content"] = int(has.sum())
    counts["items_without_content"] = int((~has).sum())
    return ItemContent(tokens, ids, x.astype(np.float32), has, counts, sources)
