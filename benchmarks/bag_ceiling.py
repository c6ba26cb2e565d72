"""How far can any unsupervised vector derived from the item bag go on the ML-100K probes?

    python benchmarks/bag_ceiling.py --data-path ../shared/data/ml-100k [--repeats 5]

The user-embedding target (issue: "vectors that beat the raw item bag") compares a frozen
linear probe on the exported user vectors with logistic regression on the raw TF-IDF item bag.
This benchmark measures, with the same probe (ptum.evaluation.embeddings.linear_probes: LR,
C=1, standardised dense features, the same stratified folds and label fractions as `ptum
evaluate-embeddings`), the classic unsupervised compressions of the same bag: truncated SVD at
32..256 dimensions, the average of PPMI-SVD item vectors (item2vec's closed form) and the bag
smoothed by item-item co-occurrence, beside the raw bag; and whether what the bag leaves out
carries the labels (feature-rich inputs a model could read): the bag split by rating, the
rating histogram, the hours and weekdays of the events, the items' genres (the catalog's
categories), each beside the bag; a supervised non-linear probe of the bag (an RBF kernel,
Nystroem features); and, with `--embeddings LABEL=DIR` (a `ptum export-embeddings` output of
this dataset, repeatable), the exported user vectors alone and beside the bag (standardised,
scaled by 1/sqrt(d) to the bag rows' unit norm): whether the vector holds anything the bag
does not. Rows: each user's newest history of a `ptum tokenize --split window --window 10`
dataset (what `export-embeddings` embeds).
Writes benchmarks/results/bag_ceiling_ml100k.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAG = "tfidf_bag (raw bag LR)"


def ppmi_item_vectors(bags, dim: int) -> np.ndarray:
    """[items, dim] item vectors: the top singular vectors of the item-item PPMI matrix."""
    b = bags.astype(np.float64)
    co = (b.T @ b).toarray()
    n = np.asarray(b.sum(axis=0)).ravel() + 1e-9
    with np.errstate(divide="ignore"):
        pmi = np.log(np.maximum(co * b.sum() / np.outer(n, n), 1e-12))
    ppmi = np.maximum(pmi, 0.0)
    np.fill_diagonal(ppmi, 0.0)
    u, s, _ = np.linalg.svd(ppmi)
    return u[:, :dim] * np.sqrt(s[:dim])


def features(bags, seed: int = 0) -> dict:
    from scipy import sparse
    from sklearn.preprocessing import normalize

    from ptum.evaluation.embeddings import bag_features

    out = {}
    for k in (32, 64, 128, 256):     # the TF-IDF bag and its SVD, as evaluate-embeddings builds them
        base = bag_features(bags, k, seed)
        out.setdefault(BAG, base["tfidf_bag"])
        out[f"tfidf_svd{k}"] = base[f"tfidf_svd{k}"]
    tfidf = out[BAG]
    for k in (32, 64):
        out[f"ppmi_svd{k}_item_average"] = normalize(bags.astype(np.float64)) @ ppmi_item_vectors(bags, k)
    cos = normalize(bags.T.tocsr().astype(np.float64)) @ normalize(bags.T.tocsr().astype(np.float64)).T
    smoothed = sparse.csr_matrix(normalize(tfidf @ cos))
    out["tfidf_bag + co-occurrence smoothed bag"] = sparse.hstack([tfidf, smoothed]).tocsr()
    return out


def more_bag_features(bags, tfidf, seed: int = 0) -> dict:
    """The SVD of the plain 0/1 bag (no idf: what a model that weighs every item the same
    compresses) and an RBF kernel on the TF-IDF bag (Nystroem features: a non-linear probe)."""
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD
    from sklearn.kernel_approximation import Nystroem

    binary = bags.copy()
    binary.data[:] = 1.0
    return {"binary_svd64 (no idf)": TruncatedSVD(64, random_state=seed).fit_transform(binary),
            "rbf kernel on tfidf_bag (Nystroem 700, gamma 0.5)": sparse.csr_matrix(
                Nystroem(gamma=0.5, n_components=min(700, bags.shape[0]), random_state=seed).fit_transform(tfidf))}


def genre_features(bags, tfidf, data: str) -> dict:
    """The user's genre histogram (the catalog's categories, normalised), alone and beside the bag;
    none when the catalog has no categories."""
    import pyarrow.parquet as pq
    from scipy import sparse

    path = os.path.join(data, "vocab", "catalog.parquet")
    if not os.path.exists(path):
        return {}
    cat = pq.read_table(path, columns=["token_id", "categories"]).to_pylist()
    genres = sorted({g for r in cat for g in (r["categories"] or "").split("|") if g})
    if not genres:
        return {}
    item_genres = np.zeros((bags.shape[1], len(genres)))
    for r in cat:
        for g in (r["categories"] or "").split("|"):
            if g and r["token_id"] < bags.shape[1]:
                item_genres[r["token_id"], genres.index(g)] = 1.0
    hist = np.asarray(bags @ item_genres)
    hist = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    return {"genre histogram": hist, "tfidf_bag + genre histogram": sparse.hstack([tfidf, sparse.csr_matrix(hist)]).tocsr()}


def embedding_features(specs, users, tfidf) -> dict:
    """LABEL=DIR exports: the vectors (rows in `users` order) alone and beside the bag."""
    from ptum.evaluation.embeddings import beside_bag, read_embedding_table

    out = {}
    for spec in specs:
        label, _, path = spec.rpartition("=")
        ids, emb, _ = read_embedding_table(path)
        pos = {u: i for i, u in enumerate(ids)}
        missing = [u for u in users if u not in pos]
        if missing:
            raise SystemExit(f"--embeddings {path}: {len(missing)} users of the dataset are not in it "
                             f"(e.g. {missing[0]!r}): export this dataset's model")
        x = emb[[pos[u] for u in users]]
        out[label] = x
        out[f"tfidf_bag + {label}"] = beside_bag(tfidf, x)
    return out


def newest_events(ds, users) -> dict:
    """user -> (item tokens, values (ratings), timestamps) of the row `newest_rows` embeds for them:
    the test row, else the train row."""
    out = {}
    for split in ("train", "test"):           # test rows replace train rows
        if split not in ds.splits:
            continue
        t = ds.read_split(split).select(["user_id", "item_ids", "values", "timestamps"]).to_pydict()
        for u, items, values, times in zip(t["user_id"], t["item_ids"], t["values"], t["timestamps"]):
            out[u] = (np.asarray(items), np.asarray(values, np.float64), np.asarray(times, np.int64))
    return {u: out[u] for u in users}


def side_features(bags, tfidf, events: dict, users) -> dict:
    """What the bag leaves out, beside it (`tfidf`: the TF-IDF bag of `features`): each item split by its rating (>= 4 or below), the
    user's rating histogram, and when they rate (hour of day, day of week; UTC)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.preprocessing import normalize

    from ptum.data import contracts

    n_items = bags.shape[1]
    r, c_like, hist, clock = [], [], np.zeros((len(users), 5)), np.zeros((len(users), 31))
    for j, u in enumerate(users):
        items, values, times = events[u]
        keep = (items >= contracts.FIRST_ITEM_ID) & (items < n_items)
        r.append(np.full(int(keep.sum()), j))
        c_like.append(2 * items[keep] + (values[keep] >= 4))
        np.add.at(hist[j], np.clip(np.rint(values).astype(int), 1, 5) - 1, 1)
        np.add.at(clock[j], (times // 3600) % 24, 1)
        np.add.at(clock[j], 24 + (times // 86400 + 3) % 7, 1)      # 1970-01-01 was a Thursday
    r, c_like = np.concatenate(r), np.concatenate(c_like)
    liked = sparse.csr_matrix((np.ones(len(r)), (r, c_like)), shape=(len(users), 2 * n_items))
    hist, clock = sparse.csr_matrix(normalize(hist)), sparse.csr_matrix(normalize(clock))
    return {"tfidf_bag split by rating (>= 4 / below)": TfidfTransformer().fit_transform(liked),
            "tfidf_bag + rating histogram": sparse.hstack([tfidf, hist]).tocsr(),
            "tfidf_bag + hour and weekday histograms": sparse.hstack([tfidf, clock]).tocsr()}


def versus_bag(res: dict, name: str) -> str:
    """`name`'s AUC minus the bag's, paired over the folds, with its 95% interval ('' for the bag)."""
    d = res.get("paired_auc_difference", {}).get(f"{BAG} - {name}")
    if d is None:
        return ""
    lo, hi = -d["ci95"][1], -d["ci95"][0]
    return f"{-d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-path", default=os.path.join(ROOT, "..", "shared", "data", "ml-100k"))
    ap.add_argument("--work", default="/tmp/ptum-bag-ceiling")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--embeddings", action="append", default=[], metavar="LABEL=DIR",
                    help="a ptum export-embeddings output of this dataset (repeatable)")
    a = ap.parse_args(argv)
    from ptum.data import contracts
    from ptum.evaluation.embeddings import item_bags, linear_probes, newest_rows, read_embedding_table, read_labels

    data = os.path.join(a.work, "data")
    if not os.path.exists(os.path.join(data, contracts.MANIFEST)):
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "ptum"), "tokenize", "--input", a.data_path,
                        "--format", "movielens", "--output", data, "--split", "window", "--window", "10"],
                       check=True, capture_output=True)
    ds = contracts.open_dataset(data)
    rows = newest_rows(ds)
    users = np.asarray(rows.user_ids, dtype=object)
    bags = item_bags(rows, users)
    feats = features(bags)
    tfidf = feats[BAG]
    feats.update(side_features(bags, tfidf, newest_events(ds, users), users))
    feats.update(more_bag_features(bags, tfidf))
    feats.update(genre_features(bags, tfidf, data))
    feats.update(embedding_features(a.embeddings, users, tfidf))
    labels = read_labels(os.path.join(data, "labels", "users.parquet"), ["gender", "age_group"])
    result = common.envelope(shlex.join(["python", "benchmarks/bag_ceiling.py", *(argv or sys.argv[1:])]))
    result["probes"], table = {}, []
    for col in ("gender", "age_group"):
        lab = labels[col]
        keep = np.array([u in lab for u in users])
        y = np.array([lab[u] for u in users[keep]], dtype=object).astype(str)
        res = linear_probes({k: v[keep] for k, v in feats.items()}, y, 5, a.repeats, (0.1, 1.0), 0, reference=BAG)
        result["probes"][col] = res
        for name in feats:
            table.append({"label": col, "features": name,
                          **{f"AUC @{f}": f"{res['by_fraction'][f][name]['auc']['mean']:.3f}" for f in ("0.1", "1.0")},
                          "minus bag @1.0 [95% CI]": versus_bag(res["by_fraction"]["1.0"], name)})
    result["embeddings"] = {label: {"path": path, **{k: read_embedding_table(path)[2].get(k) for k in
                                                     ("model", "model_version", "user_embedding")}}
                            for label, path in (spec.rsplit("=", 1) for spec in a.embeddings)}
    result["notes"] = ("The same probe and folds as ptum evaluate-embeddings (the last column: paired over the "
                       "folds). No unsupervised compression of the bag reaches the raw-bag LR on gender; ratings, "
                       "event times or the items' genres beside the bag add nothing a linear probe can use, and "
                       "a non-linear (RBF kernel) probe of the bag does no better than the linear one: a model "
                       "fed them has no signal beyond the bag to carry into its vector. The exported PTUM "
                       "profiles beside the bag add nothing either: what they hold, the bag holds.")
    common.write_result("bag_ceiling_ml100k", result,
                        ["label", "features", "AUC @0.1", "AUC @1.0", "minus bag @1.0 [95% CI]"], table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
