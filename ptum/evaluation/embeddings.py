"""How good is an exported user-embedding table? Measured as its consumers use it.

- Linear probes: logistic regression on the frozen, standardised embeddings for each label
  column, repeated stratified k-fold at several label fractions; AUC (macro one-vs-rest for
  multi-class), accuracy, macro-F1. Baselines on the same folds: LR on the TF-IDF bag of
  items, its truncated SVD and a Gaussian random projection to the embedding's dimension
  (both fit on all users, as pre-training is), and the same architecture untrained (with a
  model); and the bag with the embeddings beside it (does the vector add anything to the
  bag?). Paired differences per fold with a 95% interval.
- Future-window retrieval (PinnerFormer's evaluation of batch user embeddings): embed each
  user from the behaviors before the window (the last W of the row), score every item,
  Recall@10 / NDCG@10 over all the window's items (history filtered); and next-action
  Recall@10 inside the window with the embedding frozen at the cut vs recomputed after
  every action (what a daily batch export loses).
- Health: non-finite rows are an error naming the users; norm distribution; effective rank.

Reads the Parquet table of `ptum export-embeddings`; no TensorFlow, no Beam.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ptum.data import contracts


BESIDE_BAG = "(tfidf_bag + embeddings)"


class EmbeddingEvalError(ValueError):
    """Bad input for the embedding report (one line, naming what is wrong)."""


# ------------------------------------------------------------------ reading
def read_embedding_table(path: str):
    """(user ids, [N, d] float32, manifest) of a committed export (its manifest lists the files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = contracts.read_sealed_manifest(
        path, EmbeddingEvalError, f"no {contracts.MANIFEST}: not a finished ptum export-embeddings output")
    files = [os.path.join(path, f) for f in manifest["files"] if f.endswith(".parquet")]
    try:
        table = pa.concat_tables([pq.read_table(f, columns=["user_id", "embedding"]) for f in files])
    except (OSError, ValueError) as e:
        raise EmbeddingEvalError(f"{path}: an embedding file the manifest lists is missing or unreadable "
                                 f"({str(e).splitlines()[0][:160]}); export again") from None
    users = np.asarray(table.column("user_id").to_pylist(), dtype=object)
    d = int(manifest.get("dim") or table.schema.field("embedding").type.list_size)
    flat = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32)
    return users, flat.reshape(len(users), d), manifest


def read_item_table(path: str):
    """(item ids, retrieval vectors [n, d + 1], space) of a committed export's item table:
    [user embedding, 1] . retrieval_vector is the model's score of the item for the user."""
    import pyarrow.parquet as pq

    manifest = contracts.read_sealed_manifest(
        path, EmbeddingEvalError, f"no {contracts.MANIFEST}: not a finished ptum export-embeddings output")
    if not manifest.get("items"):
        raise EmbeddingEvalError(f"{path}: this export has no item table (exported from an older SavedModel); "
                                 "export again")
    try:
        table = pq.read_table(os.path.join(path, manifest["items"]["file"]))
    except (OSError, ValueError) as e:
        raise EmbeddingEvalError(f"{path}: the item table is missing or unreadable ({str(e).splitlines()[0][:160]}); "
                                 "export again") from None
    vectors = np.asarray(table.column("retrieval_vector").combine_chunks().flatten(), np.float32)
    return table.column("item_id").to_pylist(), vectors.reshape(table.num_rows, -1), manifest["items"]["space"]


def health(users: np.ndarray, emb: np.ndarray) -> dict:
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        names = ", ".join(map(str, users[bad][:5]))
        raise EmbeddingEvalError(f"{int(bad.sum())} embedding row(s) are not finite (NaN/inf): users {names}"
                                 + (" ..." if bad.sum() > 5 else ""))
    norms = np.linalg.norm(emb, axis=1)
    centred = emb - emb.mean(axis=0, keepdims=True)
    sv = np.linalg.svd(centred, compute_uv=False)
    p = sv / max(sv.sum(), 1e-12)
    p = p[p > 0]
    return {"users": int(len(users)), "dim": int(emb.shape[1]),
            "norm": {q: float(np.percentile(norms, v)) for q, v in
                     (("min", 0), ("p05", 5), ("median", 50), ("p95", 95), ("max", 100))},
            # exp(entropy of the normalised singular values): how many directions are used.
            "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
            "duplicate_rows": int(len(emb) - len(np.unique(np.round(emb, 6), axis=0)))}


def read_labels(path: str, columns: Sequence[str]):
    """{column: {user_id: label string}} from CSV or Parquet; missing values are missing."""
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise EmbeddingEvalError(f"--labels {path}: no such file")
    if path.endswith(".parquet") or os.path.isdir(path):
        t = pq.read_table(path)
    else:
        t = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    if "user_id" not in t.column_names:
        raise EmbeddingEvalError(f"--labels {path}: no user_id column (has {t.column_names})")
    out = {}
    users = [str(u) for u in t.column("user_id").to_pylist()]
    for c in columns:
        if c not in t.column_names:
            raise EmbeddingEvalError(f"--label-column {c}: not in {path} (has {t.column_names})")
        col = t.column(c)
        if col.type in ("float", "double"):
            col = pc.if_else(pc.is_nan(col), None, col)
        out[c] = {u: str(v) for u, v in zip(users, col.to_pylist()) if v is not None and str(v) != ""}
    return out


# ------------------------------------------------------------------ baselines
def item_bags(rows, users: np.ndarray):
    """Sparse [len(users), V] counts of each user's items (from the dataset's rows)."""
    from scipy import sparse

    pos = {u: i for i, u in enumerate(rows.user_ids)}
    r, c = [], []
    for j, u in enumerate(users):
        i = pos.get(u)
        if i is None:
            continue
        items = rows.items[rows.offsets[i]:rows.offsets[i + 1]]
        items = items[items >= contracts.FIRST_ITEM_ID]
        r.append(np.full(len(items), j))
        c.append(items)
    r = np.concatenate(r) if r else np.zeros(0, np.int64)
    c = np.concatenate(c) if c else np.zeros(0, np.int64)
    n_items = int(c.max()) + 1 if len(c) else contracts.FIRST_ITEM_ID
    return sparse.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(users), n_items))


def bag_features(bags, dim: int, seed: int = 0) -> Dict[str, object]:
    """TF-IDF bag (sparse), its truncated SVD and a random projection to `dim`."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.random_projection import GaussianRandomProjection

    tfidf = TfidfTransformer().fit_transform(bags)
    k = max(1, min(dim, tfidf.shape[1] - 1, tfidf.shape[0] - 1))
    return {"tfidf_bag": tfidf,
            f"tfidf_svd{dim}": TruncatedSVD(k, random_state=seed).fit_transform(tfidf),
            f"tfidf_random_projection{dim}": GaussianRandomProjection(dim, random_state=seed).fit_transform(tfidf)}


def beside_bag(tfidf, emb: np.ndarray):
    """The TF-IDF bag with the embeddings beside it (standardised and scaled by 1/sqrt(d), so a
    row's part is about the bag row's unit norm): does the vector add anything to the bag?"""
    from scipy import sparse
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(emb) / np.sqrt(max(emb.shape[1], 1))
    return sparse.hstack([tfidf, sparse.csr_matrix(z)]).tocsr()


# ------------------------------------------------------------------ probes
def _probe_scores(x, y: np.ndarray, train: np.ndarray, test: np.ndarray, classes: np.ndarray) -> dict:
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    xtr, xte = x[train], x[test]
    if not sparse.issparse(x):
        scaler = StandardScaler().fit(xtr)
        xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    clf = LogisticRegression(max_iter=2000, C=1.0, class_weight="balanced")
    clf.fit(xtr, y[train])
    proba = clf.predict_proba(xte)
    pred = clf.classes_[proba.argmax(axis=1)]
    if len(classes) == 2:
        auc = roc_auc_score(y[test] == clf.classes_[1], proba[:, 1])
    else:
        full = np.zeros((len(test), len(classes)))
        for j, c in enumerate(clf.classes_):
            full[:, np.searchsorted(classes, c)] = proba[:, j]
        auc = roc_auc_score(y[test], full, multi_class="ovr", average="macro", labels=classes)
    return {"auc": float(auc), "accuracy": float(accuracy_score(y[test], pred)),
            "macro_f1": float(f1_score(y[test], pred, average="macro"))}


def _subsample(train: np.ndarray, y: np.ndarray, fraction: float, rng) -> np.ndarray:
    """A stratified share of the training fold (at least 2 per class)."""
    if fraction >= 1.0:
        return train
    keep = []
    for c in np.unique(y[train]):
        members = train[y[train] == c]
        n = max(2, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=min(n, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def _mean_ci(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)]}


def linear_probes(features: Dict[str, object], labels: np.ndarray, folds: int = 5, repeats: int = 5,
                  fractions: Sequence[float] = (1.0,), seed: int = 0, reference: str = "embeddings",
                  pairs: Sequence[Tuple[str, str]] = ()) -> dict:
    """Every feature set on the same folds; paired differences of `reference` to each other, and
    of each (a, b) in `pairs` (a - b)."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    classes = np.unique(labels)
    if len(classes) < 2:
        raise EmbeddingEvalError(f"only one class ({classes.tolist()}) among the labelled users")
    min_class = min(int((labels == c).sum()) for c in classes)
    folds = max(2, min(folds, min_class))
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    per_fold: Dict[float, Dict[str, List[dict]]] = {f: {k: [] for k in features} for f in fractions}
    for i, (train, test) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        for frac in fractions:
            sub = _subsample(train, labels, frac, np.random.default_rng([seed, i, int(frac * 1000)]))
            for name, x in features.items():
                per_fold[frac][name].append(_probe_scores(x, labels, sub, test, classes))
    out = {"classes": classes.tolist(), "folds": folds, "repeats": repeats, "by_fraction": {}}
    for frac, by_feat in per_fold.items():
        res = {}
        for name, scores in by_feat.items():
            res[name] = {m: _mean_ci([s[m] for s in scores]) for m in ("auc", "accuracy", "macro_f1")}
        auc = {name: np.array([s["auc"] for s in scores]) for name, scores in by_feat.items()}
        wanted = [(reference, name) for name in by_feat if name != reference and reference in by_feat]
        wanted += [(a, b) for a, b in pairs if a in by_feat and b in by_feat]
        if wanted:
            res["paired_auc_difference"] = {f"{a} - {b}": _mean_ci(auc[a] - auc[b]) for a, b in wanted}
        out["by_fraction"][str(frac)] = res
    return out


# ------------------------------------------------------------------ future windows
def window_sets(rows, i: int, cut: int):
    """(history tokens, window targets) of row `i` cut before behavior `cut`: the targets are
    the window's items that are not in the history (reserved ids excluded)."""
    s0 = rows.offsets[i]
    hist = set(rows.items[s0:s0 + cut].tolist())
    return hist, {int(t) for t in rows.items[s0 + cut:rows.offsets[i + 1]]
                  if t >= contracts.FIRST_ITEM_ID and int(t) not in hist}


def window_retrieval(embed: Callable, rows, table: np.ndarray, window: int, k: int = 10,
                     recompute: bool = False, batch_size: int = 256, bias: Optional[np.ndarray] = None) -> dict:
    """Future-window retrieval over the rows with more than `window` behaviors.

    `embed(rows, idx, ends) -> [len(idx), d]` embeds each row's behaviors before `ends`.
    Recall@k = |top-k ∩ window items| / |window items|, NDCG@k with binary gains (ideal DCG
    over min(|window items|, k)); items of the input history are never ranked nor counted.
    With `recompute`: next-action Recall@k within the window, with the embedding frozen at
    the cut vs recomputed after every action. Scores: embedding . table[i] + bias[i]."""
    n_items = table.shape[0]
    bias = np.zeros(n_items, np.float32) if bias is None else np.asarray(bias, np.float32)
    lens = rows.lengths
    eligible = np.flatnonzero(lens > window)
    sums = {"recall": 0.0, "ndcg": 0.0, "users": 0}
    frozen_hits = fresh_hits = actions = 0
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for b in range(0, len(eligible), batch_size):
        idx = eligible[b:b + batch_size]
        cut = lens[idx] - window
        users = np.asarray(embed(rows, idx, cut), np.float32)
        scores = users @ table.T + bias
        scores[:, :contracts.FIRST_ITEM_ID] = -np.inf
        for r, i in enumerate(idx):
            s0 = rows.offsets[i]
            hist = rows.items[s0:s0 + cut[r]]
            scores[r, hist] = -np.inf
        top = np.argpartition(-scores, min(k, n_items - 1) - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)
        for r, i in enumerate(idx):
            _, target = window_sets(rows, i, cut[r])
            if not target:
                continue
            hit = np.array([int(t) in target for t in top[r]], np.float64)
            sums["recall"] += hit.sum() / len(target)
            sums["ndcg"] += (hit * discount).sum() / discount[:min(len(target), k)].sum()
            sums["users"] += 1
        if recompute:
            f, g, a = _next_action_hits(embed, rows, idx, cut, users, table, bias, window, k)
            frozen_hits, fresh_hits, actions = frozen_hits + f, fresh_hits + g, actions + a
    n = max(sums["users"], 1)
    out = {f"window_recall@{k}": sums["recall"] / n, f"window_ndcg@{k}": sums["ndcg"] / n,
           "window": window, "users": sums["users"]}
    if recompute:
        fr, fh = frozen_hits / max(actions, 1), fresh_hits / max(actions, 1)
        out.update({f"next_action_recall@{k}_frozen": fr, f"next_action_recall@{k}_recomputed": fh,
                    "recompute_gain": (fh / fr - 1.0) if fr > 0 else None, "actions": int(actions)})
    return out


def _next_action_hits(embed, rows, idx, cut, frozen, table, bias, window, k):
    """Hits@k of each window action, from the embedding at the cut vs after the actions before it."""
    f = g = a = 0
    for j in range(window):
        ends = cut + j
        fresh = np.asarray(embed(rows, idx, ends), np.float32) if j else frozen
        for name, users in (("frozen", frozen), ("fresh", fresh)):
            scores = users @ table.T + bias
            scores[:, :contracts.FIRST_ITEM_ID] = -np.inf
            for r, i in enumerate(idx):
                s0 = rows.offsets[i]
                target = int(rows.items[s0 + ends[r]])
                seen = rows.items[s0:s0 + ends[r]]
                if target < contracts.FIRST_ITEM_ID or target in set(seen.tolist()):
                    continue
                scores[r, seen] = -np.inf
                hit = int((scores[r] > scores[r, target]).sum() < k)
                if name == "frozen":
                    f += hit
                    a += 1
                else:
                    g += hit
    return f, g, a


# ------------------------------------------------------------------ report
def projection_png(emb: np.ndarray, labels: Optional[np.ndarray], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = emb - emb.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
    else:
        for c in np.unique(labels):
            m = labels == c
            ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.6, label=str(c))
        ax.legend(markerscale=3, fontsize=8)
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _ann_report(path: str, users, emb, ds, rows, model: Optional[str] = None, window: int = 10,
                max_window_users: int = 20000) -> dict:
    """The ANN check on the exported files (ptum.evaluation.retrieval), each user's own history
    left out when the dataset is given. With the model too: recall of the future window of the
    test rows (each user embedded by the model at the cut before its last `window` behaviors,
    the items retrieved from the exported table exactly and through the index)."""
    from ptum.evaluation.retrieval import RetrievalError, ann_check, window_recall

    item_ids, vectors, space = read_item_table(path)
    history = None
    name = None
    if ds is not None:
        vocab = ds.read_vocab_table(contracts.ITEMS_VOCAB)
        name = np.array([""] * (max(vocab.column("token_id").to_pylist(), default=0) + 1), dtype=object)
        name[np.asarray(vocab.column("token_id").to_pylist())] = vocab.column("item_id").to_pylist()
    if name is not None and rows is not None:
        pos = {u: i for i, u in enumerate(rows.user_ids)}
        history = []
        for u in users:
            i = pos.get(u)
            toks = rows.items[rows.offsets[i]:rows.offsets[i + 1]] if i is not None else []
            history.append({name[t] for t in toks if t < len(name)})
    try:
        out = {"space": space, **ann_check(emb, item_ids, vectors, history)}
        if model and name is not None:
            from ptum.data.batches import Rows

            test = Rows.from_split(ds, "test") if "test" in ds.splits else rows
            eligible = np.flatnonzero(test.lengths > window)[:max_window_users]
            cut = test.lengths[eligible] - window
            embed, _, _ = model_embedder(model)
            queries = np.asarray(embed(test, eligible, cut), np.float32)
            hist, targets = [], []
            for i, c in zip(eligible, cut):
                h, t = window_sets(test, i, c)
                hist.append({name[x] for x in h})
                targets.append({name[x] for x in t})
            out.update(window_recall(queries, item_ids, vectors, hist, targets), window=window)
    except RetrievalError as e:
        raise EmbeddingEvalError(str(e)) from None
    return out


def markdown(report: dict) -> str:
    lines = [f"# User-embedding report: {report['embeddings']}", "",
             f"{report['health']['users']} users, dim {report['health']['dim']}, effective rank "
             f"{report['health']['effective_rank']:.1f}, median norm {report['health']['norm']['median']:.3f}", ""]
    for col, probe in report.get("probes", {}).items():
        lines += [f"## Probe: {col} ({probe['labelled_users']} labelled users, {len(probe['classes'])} classes, "
                  f"{probe['folds']}-fold x {probe['repeats']})", "",
                  "| label fraction | features | AUC | accuracy | macro-F1 |", "|---|---|---|---|---|"]
        for frac, res in probe["by_fraction"].items():
            for name, m in res.items():
                if name == "paired_auc_difference":
                    continue
                lines.append(f"| {frac} | {name} | {m['auc']['mean']:.3f} | {m['accuracy']['mean']:.3f} | "
                             f"{m['macro_f1']['mean']:.3f} |")
        lines += ["", "Paired AUC differences (mean, 95% interval):", ""]
        for frac, res in probe["by_fraction"].items():
            for name, d in res.get("paired_auc_difference", {}).items():
                lines.append(f"- fraction {frac}, {name}: {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
        lines.append("")
    if "retrieval" in report:
        lines += ["## Retrieval from the exported files (ANN vs exact)", "", "```",
                  json.dumps(report["retrieval"], indent=1), "```", ""]
    if "future_window" in report:
        lines += ["## Future-window retrieval", "", "```", json.dumps(report["future_window"], indent=1), "```", ""]
    return "\n".join(lines)


def embed_prefixes(fn: Callable, rows, idx: np.ndarray, ends: np.ndarray, width: int, buckets: Sequence[int],
                   time_buckets: int, batch_size: int = 256) -> np.ndarray:
    """`fn(batch)` (a user vector of the encoder) for rows `idx`, each cut at `ends`, in
    batches padded as training pads them."""
    import keras

    from ptum.data.batches import bucket_width, pad_batch

    small = [x for x in buckets if x < width]
    out = []
    for b in range(0, len(idx), batch_size):
        i, e = idx[b:b + batch_size], ends[b:b + batch_size]
        w = bucket_width(int(min(max(int(e.max()), 1), width)), small, width)
        batch = pad_batch(rows, i, w, ends=e, time_buckets=time_buckets)
        out.append(np.asarray(keras.ops.convert_to_numpy(fn(batch)), np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def model_embedder(model_dir: str, untrained: bool = False):
    """(embed(rows, idx, ends) -> user embeddings, (item table [V, d], item bias [V]), metadata)
    from a model folder: the space the user embedding is scored in. `untrained`: the same
    architecture with fresh weights (the probe baseline)."""
    from ptum.evaluation.ranking import embedding_space_numpy
    from ptum.model.saving import load_model_dir

    encoder, meta, _ = load_model_dir(model_dir)
    if untrained:
        encoder = encoder.__class__.from_config(encoder.get_config())

    def embed(rows, idx, ends):
        return embed_prefixes(encoder.user_embedding, rows, idx, ends, meta["max_len"], meta["length_buckets"],
                              meta["time_buckets"])

    return embed, embedding_space_numpy(encoder), meta


def embed_users(embed: Callable, rows, users: np.ndarray) -> np.ndarray:
    """`embed` over each user's whole row (users not in `rows` get zeros)."""
    pos = {u: i for i, u in enumerate(rows.user_ids)}
    have = np.array([u in pos for u in users], bool)
    idx = np.array([pos[u] for u in users[have]], np.int64)
    out = None
    if len(idx):
        got = np.asarray(embed(rows, idx, rows.lengths[idx]), np.float32)
        out = np.zeros((len(users), got.shape[1]), np.float32)
        out[have] = got
    return out


def newest_rows(ds):
    """Each user's newest history (the rows the embedding export embeds)."""
    from ptum.data.batches import Rows

    split = "test" if "test" in ds.splits else ds.splits[0]
    rows = Rows.from_split(ds, split)
    if "train" in ds.splits and split != "train":
        rows = rows.newest_with(Rows.from_split(ds, "train"))
    return rows


def probe_model(model_dir: str, data: str, labels: str, label_column: str, folds: int = 5, repeats: int = 1,
                seed: int = 0) -> dict:
    """Linear probe of a model's user embeddings (each user's newest history in `data`) for
    one label column, with the item-bag SVD of the same size on the same folds: what the pipeline's
    evaluator gates the blessing on. AUC at all labels."""
    ds = contracts.open_dataset(data)
    rows = newest_rows(ds)
    embed, _, _ = model_embedder(model_dir)
    lab = read_labels(labels, [label_column])[label_column]
    users = np.array([u for u in rows.user_ids if u in lab], dtype=object)
    if len(users) == 0:
        raise EmbeddingEvalError(f"{labels}: no labelled user is in {data}")
    emb = embed_users(embed, rows, users)
    y = np.array([lab[u] for u in users], dtype=object).astype(str)
    svd = f"tfidf_svd{emb.shape[1]}"
    base = bag_features(item_bags(rows, users), emb.shape[1], seed)
    res = linear_probes({"embeddings": emb, svd: base[svd]}, y, folds, repeats, (1.0,), seed)["by_fraction"]["1.0"]
    return {"label_column": label_column, "labelled_users": int(len(users)),
            "users_without_label": int(len(rows.user_ids) - len(users)), "auc": res["embeddings"]["auc"]["mean"],
            f"{svd}_auc": res[svd]["auc"]["mean"], "folds": folds, "repeats": repeats}


def evaluate_embeddings(embeddings: str, data: Optional[str] = None, labels: Optional[str] = None,
                        label_columns: Sequence[str] = (), model: Optional[str] = None, folds: int = 5,
                        repeats: int = 5, fractions: Sequence[float] = (1.0,), window: Optional[int] = None,
                        recompute: bool = True, output: Optional[str] = None, seed: int = 0,
                        ann: bool = False) -> dict:
    """The whole report (see the module docstring); written to `output` when given."""
    from ptum.data.batches import Rows

    users, emb, manifest = read_embedding_table(embeddings)
    report: dict = {"embeddings": embeddings, "model_version": manifest.get("model_version"),
                    "vocab_hash": manifest.get("vocab_hash"), "health": health(users, emb)}
    ds = contracts.open_dataset(data) if data else None
    meta = None
    if model:
        from ptum.model.saving import load_model_dir
        _, meta, _ = load_model_dir(model)
        if int(meta["user_embedding"]["dim"]) != emb.shape[1]:
            raise EmbeddingEvalError(f"{embeddings}: dimension {emb.shape[1]} but --model {model} has "
                                     f"{meta['user_embedding']['dim']}")
        if manifest.get("vocab_hash") and manifest["vocab_hash"] != meta["vocab_hash"]:
            raise EmbeddingEvalError(f"{embeddings}: vocabulary {manifest['vocab_hash']} is not --model's "
                                     f"{meta['vocab_hash']}")
    if ds is not None and manifest.get("vocab_hash") and manifest["vocab_hash"] != ds.vocab_hash:
        raise EmbeddingEvalError(f"{embeddings}: vocabulary {manifest['vocab_hash']} is not --data's {ds.vocab_hash}")
    rows = newest_rows(ds) if ds is not None else None
    if labels and label_columns:
        table = read_labels(labels, label_columns)
        base = {}
        if rows is not None:
            base = bag_features(item_bags(rows, users), emb.shape[1], seed)
            base[BESIDE_BAG] = beside_bag(base["tfidf_bag"], emb)
        untrained = None
        if model and rows is not None:
            untrained = embed_users(model_embedder(model, untrained=True)[0], rows, users)
        report["probes"] = {}
        for col in label_columns:
            lab = table[col]
            keep = np.array([u in lab for u in users])
            y = np.array([lab[u] for u in users[keep]], dtype=object).astype(str)
            feats = {"embeddings": emb[keep]}
            for name, x in base.items():
                feats[name] = x[keep]
            if untrained is not None:
                feats["untrained_same_architecture"] = untrained[keep]
            res = linear_probes(feats, y, folds, repeats, fractions, seed, pairs=[(BESIDE_BAG, "tfidf_bag")])
            res.update({"labelled_users": int(keep.sum()), "users_without_label": int((~keep).sum()),
                        "labels_without_user": int(len(set(lab) - set(users.tolist())))})
            report["probes"][col] = res
    if model and rows is not None:
        w = window or int(ds.manifest.get("parameters", {}).get("window") or 10)
        test_rows = Rows.from_split(ds, "test") if "test" in ds.splits else rows
        embed, (table_, bias_), _ = model_embedder(model)
        report["future_window"] = window_retrieval(embed, test_rows, table_, w, recompute=recompute, bias=bias_)
        report["future_window"]["split"] = "test"
        report["future_window"]["clean"] = ds.manifest.get("split_scheme") == "window" and \
            int(ds.manifest["parameters"].get("window", -1)) == w
    if ann:
        report["retrieval"] = _ann_report(embeddings, users, emb, ds, rows, model,
                                          window or int((ds.manifest.get("parameters", {}).get("window") or 10)
                                                        if ds is not None else 10))
    if output:
        os.makedirs(output, exist_ok=True)
        contracts.write_json_atomic(os.path.join(output, "report.json"), report)
        with open(os.path.join(output, "report.md.tmp"), "w") as f:
            f.write(markdown(report))
        os.replace(os.path.join(output, "report.md.tmp"), os.path.join(output, "report.md"))
        color = None
        if labels and label_columns:
            lab = read_labels(labels, label_columns[:1])[label_columns[0]]
            color = np.array([lab.get(u, "(none)") for u in users], dtype=object).astype(str)
        projection_png(emb, color, os.path.join(output, "projection.png"),
                       f"user embeddings (PCA), colour: {label_columns[0] if label_columns else '-'}")
    return report
