"""User embeddings worth exporting: the window split, the profile + bag objective, and
`ptum evaluate-embeddings` (probes, future windows, health) on the exported table."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from ptum.data import contracts  # noqa: E402
from ptum.data.batches import Rows  # noqa: E402


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "ptum.cli", *args], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return r


def test_window_split_rows(tmp_path):
    from ptum.data.ingest import plan, reference

    csv = tmp_path / "e.csv"
    lines = ["user_id,item_id,timestamp"]
    for u, n in (("a", 9), ("b", 5), ("c", 3)):
        lines += [f"{u},i{j},{j}" for j in range(n)]
    csv.write_text("\n".join(lines) + "\n")
    reference.run(plan.TokenizeOptions(inputs=[str(csv)], format="csv", output=str(tmp_path / "d"),
                                       split="window", window=3))
    ds = contracts.open_dataset(str(tmp_path / "d"))
    lens = {s: dict(zip(*[ds.read_split(s).column(c).to_pylist() for c in ("user_id", "length")]))
            for s in ("train", "valid", "test")}
    # train = all but the last 2W, valid = all but the last W, test = all (users with more than W);
    # a user with W or fewer behaviors keeps the whole history in train, one with W+1..2W is in
    # valid and test only (nobody is dropped).
    assert lens["train"] == {"a": 3, "c": 3}
    assert ds.manifest["counts"]["users_train_only"] == 1 and ds.manifest["counts"]["users_eval_only"] == 1
    assert lens["valid"] == {"a": 6, "b": 2}
    assert lens["test"] == {"a": 9, "b": 5}
    assert ds.manifest["parameters"]["window"] == 3


def test_future_window_metric_by_hand():
    from ptum.evaluation.embeddings import window_retrieval

    # Two users; items 3..8. User 0: history [3, 4], window [5, 6]; user 1: history [7], window [3, 8].
    rows = Rows(user_ids=np.array(["u0", "u1"], dtype=object), offsets=np.array([0, 4, 7]),
                items=np.array([3, 4, 5, 6, 7, 3, 8], np.int32), behaviors=np.ones(7, np.int32),
                timestamps=np.arange(7, dtype=np.int64))
    table = np.eye(9, dtype=np.float32)
    scores = {0: [0, 0, 0, 9, 8, 7, 1, 6, 0], 1: [0, 0, 0, 1, 0, 0, 0, 9, 8]}

    def embed(r, idx, ends):  # fixed user vectors (dot with the identity table = the scores)
        return np.array([scores[int(i)] for i in idx], np.float32)

    out = window_retrieval(embed, rows, table, window=2, k=2, recompute=False)
    # u0: history {3, 4} filtered -> ranking 5 (7), 7 (6), 6 (1): top-2 = [5, 7]; window {5, 6}
    #   recall 1/2, DCG = 1, IDCG = 1 + 1/log2(3).
    # u1: history {7} filtered -> ranking 8 (8), 3 (1): top-2 = [8, 3]; window {3, 8}: recall 1, NDCG 1.
    assert out["users"] == 2
    assert out["window_recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["window_ndcg@2"] == pytest.approx((1 / (1 + 1 / np.log2(3)) + 1.0) / 2)
    # A per-item bias (the profile's scoring space) is added to every score: a large bias on
    # item 6 ranks it first for both users. u0: top-2 = [6, 5], window {5, 6}: recall 1, NDCG 1.
    # u1: top-2 = [6, 8], window {3, 8}: recall 1/2, DCG 1/log2(3), IDCG 1 + 1/log2(3).
    bias = np.zeros(9, np.float32)
    bias[6] = 10.0
    out = window_retrieval(embed, rows, table, window=2, k=2, recompute=False, bias=bias)
    assert out["window_recall@2"] == pytest.approx((1.0 + 0.5) / 2)
    g = 1 / np.log2(3)
    assert out["window_ndcg@2"] == pytest.approx((1.0 + g / (1 + g)) / 2)


def test_health_names_non_finite_users_and_measures_rank():
    from ptum.evaluation.embeddings import EmbeddingEvalError, health

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    h = health(np.array([f"u{i}" for i in range(50)], dtype=object), emb)
    assert 6 < h["effective_rank"] <= 8 and h["norm"]["min"] > 0
    low = np.outer(rng.normal(size=50), rng.normal(size=8)).astype(np.float32)
    assert health(np.array([f"u{i}" for i in range(50)], dtype=object), low)["effective_rank"] < 1.5
    emb[7, 3] = np.nan
    with pytest.raises(EmbeddingEvalError, match="u7"):
        health(np.array([f"u{i}" for i in range(50)], dtype=object), emb)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Generated logs (labels planted from interests) -> window split -> profile + bag model
    -> export-embeddings: the product path, through the CLI."""
    from ptum.data.generate import generate

    root = tmp_path_factory.mktemp("ue")
    logs = str(root / "logs")
    generate(logs, users=600, items=200, seed=4)
    data, model, emb = (str(root / x) for x in ("data", "model", "emb"))
    for args in (["tokenize", "--input", os.path.join(logs, "events.csv"), "--format", "csv", "--output", data,
                  "--split", "window", "--window", "5"],
                 ["pretrain", "--data", data, "--output", model, "--config", "configs/user-embeddings.yaml",
                  "--set", "train.epochs=3", "--set", "model.max_len=30", "--set", "model.embedding_dim=32"],
                 ["export-embeddings", "--model", model, "--data", data, "--output", emb]):
        r = _cli(*args)
        assert r.returncode == 0, r.stderr[-3000:]
    return {"root": root, "logs": logs, "data": data, "model": model, "emb": emb}


def test_profile_model_selects_by_window_recall_and_exports_the_profile(exported):
    from ptum.evaluation.embeddings import model_embedder, read_embedding_table

    meta = json.load(open(os.path.join(exported["model"], "metadata.json")))
    assert meta["select_metric"] == "window_recall@10" and "window_recall@10" in meta["valid"]
    assert meta["user_embedding"]["vector"] == "profile"
    history = json.load(open(os.path.join(exported["model"], "history.json")))
    assert all("valid_window_recall@10" in h for h in history)
    # The exported table (SavedModel embed_tokens) is the profile the training path computes.
    users, emb, _ = read_embedding_table(exported["emb"])
    rows = Rows.from_split(contracts.open_dataset(exported["data"]), "test")
    rows = rows.newest_with(Rows.from_split(contracts.open_dataset(exported["data"]), "train"))
    embed, _, _ = model_embedder(exported["model"])
    pos = {u: i for i, u in enumerate(rows.user_ids)}
    idx = np.array([pos[u] for u in users])
    np.testing.assert_allclose(emb, embed(rows, idx, rows.lengths[idx]), atol=1e-5)


def test_exported_item_table_is_the_user_embeddings_space(exported):
    """users.embedding . items.embedding + items.bias (= [embedding, 1] . retrieval_vector) is the
    model's own score of the profile: the same top-10 for every user as exact in-model ranking."""
    from ptum.evaluation.embeddings import read_embedding_table
    from ptum.evaluation.ranking import embedding_space_numpy
    from ptum.model.saving import load_model_dir

    users, emb, _ = read_embedding_table(exported["emb"])
    from ptum.evaluation.embeddings import read_item_table
    from ptum.evaluation.retrieval import ann_check, exact_index, search

    item_ids, vectors, space = read_item_table(exported["emb"])
    assert space == "profile" and vectors.shape[1] == emb.shape[1] + 1
    vocab = contracts.open_dataset(exported["data"]).read_vocab_table(contracts.ITEMS_VOCAB)
    token = dict(zip(vocab.column("item_id").to_pylist(), vocab.column("token_id").to_pylist()))
    assert sorted(item_ids) == sorted(k for k, t in token.items() if t >= contracts.FIRST_ITEM_ID)
    encoder, _, _ = load_model_dir(exported["model"])
    table, bias = embedding_space_numpy(encoder)
    tokens = np.array([token[i] for i in item_ids])
    in_model = emb @ table[tokens].T + bias[tokens]
    from_files = np.hstack([emb, np.ones((len(emb), 1), np.float32)]) @ vectors.T
    np.testing.assert_allclose(from_files, in_model, rtol=1e-4, atol=1e-4)
    top = lambda s: np.argsort(-s, axis=1, kind="stable")[:, :10]   # noqa: E731
    assert (top(from_files) == top(in_model)).mean() > 0.999
    # An exact inner-product index over the files ranks as the model does; HNSW nearly so.
    queries = np.hstack([emb, np.ones((len(emb), 1), np.float32)])
    found = search(exact_index(vectors), queries, 10, item_ids)
    assert (found == top(in_model)).mean() > 0.999
    check = ann_check(emb, item_ids, vectors)
    assert check["ann_agreement@10"] > 0.9 and check["items"] == len(item_ids)
    # The report's check: every user's own history left out of both lists.
    from ptum.evaluation.embeddings import evaluate_embeddings
    report = evaluate_embeddings(exported["emb"], exported["data"], ann=True)["retrieval"]
    assert report["space"] == "profile" and report["history_filtered"] and report["ann_agreement@10"] > 0.9
    # With the model: the future window's recall from the files equals the model's own
    # future-window retrieval (exact index), and the HNSW index keeps nearly all of it.
    full = evaluate_embeddings(exported["emb"], exported["data"], model=exported["model"], ann=True,
                               recompute=False)
    ret, window = full["retrieval"], full["future_window"]
    assert ret["window"] == window["window"] == 5 and ret["window_users"] == window["users"] > 0
    assert abs(ret["window_recall@10_exact"] - window["window_recall@10"]) < 1e-6
    assert ret["window_recall@10_ann"] >= 0.9 * ret["window_recall@10_exact"] > 0


def test_evaluate_embeddings_planted_and_shuffled_labels(exported):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    out = str(exported["root"] / "report")
    r = _cli("evaluate-embeddings", "--embeddings", exported["emb"], "--data", exported["data"], "--labels",
             os.path.join(exported["logs"], "users.csv"), "--label-column", "gender", "--model", exported["model"],
             "--repeats", "2", "--output", out)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.load(open(os.path.join(out, "report.json")))
    res = rep["probes"]["gender"]["by_fraction"]["1.0"]
    assert res["embeddings"]["auc"]["mean"] >= 0.8, res
    assert {"tfidf_bag", "tfidf_svd32", "tfidf_random_projection32", "untrained_same_architecture"} <= set(res)
    assert "embeddings - tfidf_svd32" in res["paired_auc_difference"]
    # The bag with the vector beside it, paired with the bag alone: does the vector add to the bag?
    added = res["paired_auc_difference"]["(tfidf_bag + embeddings) - tfidf_bag"]["mean"]
    assert added == pytest.approx(res["(tfidf_bag + embeddings)"]["auc"]["mean"] - res["tfidf_bag"]["auc"]["mean"])
    fw = rep["future_window"]
    assert fw["clean"] and fw["window"] == 5 and 0 < fw["window_recall@10"] <= 1
    assert "next_action_recall@10_recomputed" in fw
    assert os.path.getsize(os.path.join(out, "projection.png")) > 1000
    assert "| 1.0 | embeddings |" in open(os.path.join(out, "report.md")).read()

    # Shuffled labels carry no signal: the same probe sits at chance. One permutation's CV AUC
    # spreads by ~0.03 around 0.5 on these few hundred users: the mean over three permutations
    # must be within 0.05 (about 3 standard deviations).
    t = pcsv.read_csv(os.path.join(exported["logs"], "users.csv"))
    g = np.asarray(t.column("gender").to_pylist(), dtype=object)
    from ptum.evaluation.embeddings import evaluate_embeddings
    aucs = []
    for seed in range(3):
        shuffled = str(exported["root"] / f"shuffled{seed}.csv")
        pcsv.write_csv(pa.table({"user_id": t.column("user_id"),
                                 "gender": np.random.default_rng(seed).permutation(g).astype(str)}), shuffled)
        rep = evaluate_embeddings(exported["emb"], exported["data"], shuffled, ["gender"], repeats=4)
        aucs.append(rep["probes"]["gender"]["by_fraction"]["1.0"]["embeddings"]["auc"]["mean"])
    assert abs(np.mean(aucs) - 0.5) <= 0.05, aucs


def test_evaluate_embeddings_bad_input(exported, tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("user_id,gender\n" + "".join(f"user_{i:07d},F\n" for i in range(50)) + "ghost,M\n")
    r = _cli("evaluate-embeddings", "--embeddings", exported["emb"], "--labels", str(one), "--label-column", "gender")
    assert r.returncode == 2 and "one class" in r.stderr and "Traceback" not in r.stderr
    r = _cli("evaluate-embeddings", "--embeddings", str(tmp_path), "--labels", str(one), "--label-column", "gender")
    assert r.returncode == 2 and "manifest" in r.stderr
    r = _cli("evaluate-embeddings", "--embeddings", exported["emb"], "--labels", str(one), "--label-column", "age")
    assert r.returncode == 2 and "--label-column age" in r.stderr


def test_probe_gate_on_planted_labels(exported):
    """What the pipeline's evaluator gates the blessing on: a probe of the model's embeddings."""
    from pipelines.tfx_pipeline import _probe_parameters
    from ptum.evaluation.embeddings import EmbeddingEvalError, probe_model

    users_csv = os.path.join(exported["logs"], "users.csv")
    probe = probe_model(exported["model"], exported["data"], users_csv, "gender")
    assert probe["labelled_users"] > 500 and probe["auc"] >= 0.8, probe
    assert 0.5 < probe["tfidf_svd32_auc"] <= 1.0
    with pytest.raises(EmbeddingEvalError, match="no labelled user"):
        ghost = exported["root"] / "ghost.csv"
        ghost.write_text("user_id,gender\nghost,F\nghost2,M\n")
        probe_model(exported["model"], exported["data"], str(ghost), "gender")
    assert _probe_parameters({}) == {}
    assert _probe_parameters({"labels": users_csv, "label_column": "gender", "min_auc": 0.7}) == {
        "probe_labels": users_csv, "probe_label_column": "gender", "min_probe_auc": 0.7}
    with pytest.raises(ValueError, match="unknown keys"):
        _probe_parameters({"labels": users_csv, "label_column": "gender", "min_aucc": 0.7})
    with pytest.raises(ValueError, match="label_column"):
        _probe_parameters({"labels": users_csv})


def test_bag_future_cut_by_hand():
    """objective.bag_future: each row loses its newest s (1..min(W, n-1)) behaviors to the right
    shift, and exactly those are the future targets."""
    import keras

    from ptum.model.objectives import BagPrediction

    ids = np.array([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 7, 8], [0, 0, 0, 0, 0, 9]], np.int32)
    inputs = {"item_ids": ids, "behavior_ids": (ids > 0).astype(np.int32)}
    layer = BagPrediction(future=3, seed=1)
    shifted, future = layer._cut_future(inputs, ids != 0)
    shifted = keras.ops.convert_to_numpy(shifted["item_ids"])
    future = keras.ops.convert_to_numpy(future)
    for row, out, fut in zip(ids, shifted, future):
        n = int((row != 0).sum())
        s = int(fut.sum())
        assert (1 <= s <= min(3, n - 1)) if n > 1 else s == 0
        # What is left is the row without its newest s behaviors, still right-aligned.
        np.testing.assert_array_equal(out[out != 0], row[row != 0][:n - s])
        assert out[-1] != 0
        np.testing.assert_array_equal(row[fut], row[row != 0][n - s:])


def test_contrastive_term_by_hand():
    """The user-level contrastive term (objective.bag_contrastive): symmetric InfoNCE of two
    views, computed by hand; views keep the newest behavior and drop only real ones."""
    import keras

    from ptum.config import ConfigError, PTUMConfig
    from ptum.model.objectives import BagPrediction

    layer = BagPrediction(dropout=0.5, seed=3, contrastive=0.2, temperature=0.5)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    real = np.ones(4, bool)
    got = float(keras.ops.convert_to_numpy(layer._info_nce(a, b, real)))
    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = na @ nb.T / 0.5
    ce_rows = -np.diag(s - np.log(np.exp(s).sum(axis=1, keepdims=True)))
    ce_cols = -np.diag(s - np.log(np.exp(s).sum(axis=0, keepdims=True)))
    assert abs(got - 0.5 * (ce_rows.mean() + ce_cols.mean())) < 1e-5
    assert float(keras.ops.convert_to_numpy(layer._info_nce(a, a, real))) < got   # agreeing views cost less
    # Padding rows (added to split a batch evenly over devices) change nothing.
    pad = np.zeros((2, 3), np.float32)
    padded = layer._info_nce(np.concatenate([a, pad]), np.concatenate([b, pad]), np.r_[real, [False, False]])
    assert abs(float(keras.ops.convert_to_numpy(padded)) - got) < 1e-5
    ids = np.array([[0, 0, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 0, 7, 8]], np.int32)
    view = keras.ops.convert_to_numpy(layer._drop(ids))
    assert (view[:, -1] == ids[:, -1]).all() and (view[ids == 0] == 0).all()
    assert set(view[view != 0]) <= set(ids[ids != 0])
    with pytest.raises(ConfigError, match="bag_contrastive"):
        PTUMConfig.load(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "user-embeddings.yaml"),
                        ["objective.bag_contrastive=-1"])
