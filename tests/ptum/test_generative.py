"""Generative retrieval (ptum.model.generative): the prefix trie, constrained beam search equal
to brute-force enumeration of every item's tuple, every returned item a real one, and training
/ evaluation through `ptum pretrain` and `ptum evaluate` with each code source."""
import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from ptum.config import PTUMConfig
from ptum.data import contracts
from ptum.model.generative import Trie, build_generative


def _codes(n_items, levels, k, seed, collisions=True):
    """Item codes for tokens 0 .. n_items + 2 (reserved tokens uncoded), collision token last."""
    from ptum.model.semantic_ids import dedup_tokens

    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, k, size=(n_items, levels))
    codes = np.full((n_items + contracts.FIRST_ITEM_ID, levels + 1), -1, np.int64)
    codes[contracts.FIRST_ITEM_ID:] = np.concatenate([drawn, dedup_tokens(drawn)[:, None]], axis=1)
    return codes


def test_trie_reaches_every_coded_item_once_and_refuses_shared_tuples():
    codes = _codes(60, 2, 4, seed=0)
    codes[10] = -1                                   # an item without a code is not in the trie
    trie = Trie.from_codes(codes)
    found = {}

    def walk(node, prefix):
        if trie.node_item[node] >= 0:
            found[int(trie.node_item[node])] = tuple(prefix)
        kids = range(trie.child_start[node], trie.child_start[node] + trie.child_count[node])
        assert [trie.node_code[c] for c in kids] == sorted(trie.node_code[c] for c in kids)
        for c in kids:
            walk(c, prefix + [int(trie.node_code[c])])
    walk(0, [])
    coded = [i for i in range(len(codes)) if (codes[i] >= 0).all()]
    assert sorted(found) == coded and all(found[i] == tuple(codes[i]) for i in coded)
    assert trie.max_children[0] <= 4 and len(trie.max_children) == 3
    codes[11] = codes[12]
    with pytest.raises(ValueError, match="share a code tuple"):
        Trie.from_codes(codes)


def _model(codes, seed=0, targets_per_row=0.0):
    import keras

    keras.utils.set_random_seed(seed)
    cfg = PTUMConfig.from_dict({"model": {"architecture": "generative", "embedding_dim": 16, "num_blocks": 1,
                                          "num_heads": 2, "max_len": 8, "dropout": 0.0, "num_items": len(codes)},
                                "generative": {"codes": "random", "decoder_blocks": 1},
                                "objective": {"loss_average": "dataset" if targets_per_row else "batch"}})
    return build_generative(cfg, codes, targets_per_row)


def test_dataset_loss_average_weighs_every_target_the_same_in_any_batch():
    """objective.loss_average=dataset: the teacher-forced loss is a batch's summed NLL over its
    rows x the data's mean targets per row, so two batches weighted by their rows add up to the
    batch that holds both; the batch mean is that sum over the batch's own targets."""
    codes = _codes(40, 2, 4, seed=3)
    rng = np.random.default_rng(0)
    windows = np.zeros((6, 9), np.int32)                    # left-padded histories + next item
    for row, n in enumerate([2, 3, 3, 9, 9, 8]):
        windows[row, 9 - n:] = rng.integers(contracts.FIRST_ITEM_ID, len(codes), n)
    short, long = windows[:3], windows[3:]
    targets = (windows != contracts.PAD_ID).sum(axis=1) - 1
    per_row = float(targets.mean())
    loss = {}
    for name, tpr in (("batch", 0.0), ("dataset", per_row)):
        model = _model(codes, seed=0, targets_per_row=tpr)
        assert type(model).from_config(model.get_config()).targets_per_row == tpr
        loss[name] = [3 * float(keras.ops.convert_to_numpy(model({"item_ids": w})["generative"]))
                      for w in (short, long)] + [6 * float(keras.ops.convert_to_numpy(model({"item_ids": windows})
                                                                                          ["generative"]))]
    assert loss["dataset"][0] + loss["dataset"][1] == pytest.approx(loss["dataset"][2], rel=1e-5)
    for i, part in enumerate((targets[:3], targets[3:])):
        assert loss["dataset"][i] == pytest.approx(loss["batch"][i] * part.sum() / (3 * per_row), rel=1e-5)


def test_constrained_beam_search_equals_brute_force_and_returns_only_real_items():
    codes = _codes(40, 2, 3, seed=1)                 # 40 items on 3 x 3 codes: many collisions
    model = _model(codes)
    rng = np.random.default_rng(2)
    hist = rng.integers(contracts.FIRST_ITEM_ID, len(codes), size=(5, 6)).astype(np.int32)
    hist[1, :3] = contracts.PAD_ID                   # left padding
    coded = np.flatnonzero((codes >= 0).all(axis=1))
    brute = np.asarray(model.tuple_log_probs(hist, codes[coded]))
    items, scores = (np.asarray(x) for x in model.beam_search(hist, beam_size=len(coded)))
    for b in range(len(hist)):
        order = np.argsort(-brute[b], kind="stable")
        assert np.allclose(scores[b], brute[b][order], atol=1e-4)
        assert np.array_equal(np.sort(items[b]), np.sort(coded))
        assert np.allclose(brute[b][np.searchsorted(coded, items[b])], scores[b], atol=1e-4)
    # A narrow beam: fewer, still real and distinct, best first, each scored as brute force scores it.
    items, scores = (np.asarray(x) for x in model.beam_search(hist, beam_size=7))
    assert items.shape == (5, 7) and np.isin(items, coded).all()
    assert all(len(set(row)) == 7 for row in items.tolist()) and (np.diff(scores, axis=1) <= 1e-6).all()
    assert np.allclose(np.take_along_axis(brute, np.searchsorted(coded, items), axis=1), scores, atol=1e-4)


def test_beam_search_leaves_excluded_items_out_inside_the_search():
    codes = _codes(40, 2, 3, seed=4)
    codes[7] = -1                                    # an uncoded item in the exclusion is ignored
    model = _model(codes)
    coded = np.flatnonzero((codes >= 0).all(axis=1))
    trie = Trie.from_codes(codes)
    under = np.zeros(trie.size, int)                 # items under each node, by walking the trie
    for item in coded:
        node = 0
        under[node] += 1
        for code in codes[item]:
            kids = range(trie.child_start[node], trie.child_start[node] + trie.child_count[node])
            node = next(k for k in kids if trie.node_code[k] == code)
            under[node] += 1
    assert np.array_equal(np.asarray(model.leaf_counts()), under)
    rng = np.random.default_rng(5)
    hist = rng.integers(contracts.FIRST_ITEM_ID, len(codes), size=(4, 6)).astype(np.int32)
    # Row 0 excludes every item under the first top-level code, with repeats and padding; row 1 a
    # few items and the uncoded one; row 2 the items a plain beam of 6 would return; row 3 nothing.
    first = coded[codes[coded, 0] == codes[coded[0], 0]]
    plain = np.asarray(model.beam_search(hist, beam_size=6)[0])
    width = len(first) + 3
    exclude = np.zeros((4, width), np.int32)
    exclude[0, 3:] = first
    exclude[0, :3] = first[:3]
    exclude[1, -4:] = [coded[3], coded[5], coded[3], 7]
    exclude[2, :6] = plain[2]
    brute = np.asarray(model.tuple_log_probs(hist, codes[coded]))
    items, scores = (np.asarray(x) for x in model.beam_search(hist, len(coded), exclude=exclude))
    for b in range(4):
        allowed = ~np.isin(coded, exclude[b])
        n = int(allowed.sum())
        order = np.argsort(-brute[b][allowed], kind="stable")
        assert np.array_equal(np.sort(items[b, :n]), np.sort(coded[allowed]))
        assert np.allclose(scores[b, :n], brute[b][allowed][order], atol=1e-4)
        assert (items[b, n:] == -1).all() and (scores[b, n:] < -1e8).all()
    # A narrow beam still returns its width in items, none of them excluded.
    items, scores = (np.asarray(x) for x in model.beam_search(hist, beam_size=6, exclude=exclude))
    assert (items >= contracts.FIRST_ITEM_ID).all() and all(len(set(r)) == 6 for r in items.tolist())
    assert not any(np.isin(items[b], exclude[b]).any() for b in range(4))
    assert np.array_equal(items[3], plain[3])


def test_beam_wider_than_the_catalog_pads_with_no_item():
    codes = _codes(5, 1, 4, seed=3)
    items, scores = (np.asarray(x) for x in _model(codes).beam_search(np.array([[3, 4]], np.int32), beam_size=9))
    real = items[0] >= 0
    assert real.sum() == 5 and (items[0][~real] == -1).all() and (scores[0][~real] < -1e8).all()


def _sequence_dataset(tmp_path, users=240, items=30):
    """Users walk a cycle of items (the next item is always the current + 1): learnable."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(users):
        start, n = rng.integers(items), rng.integers(6, 12)
        lines.append(" ".join([f"u{u}"] + [f"i{(start + j) % items}" for j in range(n)]))
    src = tmp_path / "seq.txt"
    src.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "data")
    from ptum.data.ingest import plan, reference
    reference.run(plan.TokenizeOptions(inputs=[str(src)], format="sequence-lines", output=out))
    return out


def _ptum(*args):
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"))
    return subprocess.run([sys.executable, "-m", "ptum.cli", *args], capture_output=True, text=True, env=env)


SMALL = ["--set", "model.architecture=generative", "--set", "model.embedding_dim=32", "--set", "model.num_blocks=1",
         "--set", "model.max_len=10", "--set", "model.dropout=0.0", "--set", "generative.decoder_blocks=1",
         "--set", "train.batch_size=32", "--set", "train.learning_rate=0.005"]


def test_pretrain_and_evaluate_a_generative_model_from_the_cli(tmp_path):
    data = _sequence_dataset(tmp_path)
    gen = str(tmp_path / "gen")
    r = _ptum("pretrain", "--data", data, "--output", gen, "--epochs", "12", *SMALL,
              "--set", "generative.codes=random", "--set", "generative.random_levels=2",
              "--set", "generative.random_codes=4")
    assert r.returncode == 0, r.stderr
    meta = json.load(open(os.path.join(gen, "metadata.json")))
    assert meta["model"] == "ptum-generative-retrieval" and meta["item_codes"]["items_coded"] == 30
    r = _ptum("evaluate", "--model", gen, "--data", data, "--split", "test")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["users"] == 240 and m["beam_size"] == 20 and {"ndcg@5", "recall@20_unfiltered"} <= set(m)
    assert m["recall@10"] > 0.8          # the cycle is learned: chance is 10/30
    r = _ptum("evaluate", "--model", gen, "--data", data, "--split", "test", "--beam-size", "5")
    assert r.returncode == 0, r.stderr
    narrow = json.loads(r.stdout)
    assert narrow["beam_size"] == 5 and "recall@5" in narrow and "recall@10" not in narrow
    _served_equals_keras(tmp_path, gen, data)
    # The model folder is not a user encoder: commands that need one say so.
    r = _ptum("export-embeddings", "--model", gen, "--data", data, "--output", str(tmp_path / "emb"))
    assert r.returncode == 2 and "generative retrieval model" in r.stderr and "Traceback" not in r.stderr


def test_semantic_codes_from_another_vocabulary_are_refused(tmp_path, clean_dataset):
    data = _sequence_dataset(tmp_path)
    sid = str(tmp_path / "sid")
    from ptum.training.semantic_ids import learn_semantic_ids
    learn_semantic_ids(clean_dataset[0], sid, codes=4, dim=8, log=lambda s: None)
    r = _ptum("pretrain", "--data", data, "--output", str(tmp_path / "gen"), "--epochs", "1", *SMALL,
              "--semantic-ids", sid)
    assert r.returncode == 2 and "learned on vocabulary" in r.stderr
    assert not os.path.exists(tmp_path / "gen" / "metadata.json")
    r = _ptum("pretrain", "--data", data, "--output", str(tmp_path / "gen"), "--epochs", "1", *SMALL)
    assert r.returncode == 2 and "generative.semantic_ids" in r.stderr


SERVE = """
import json, sys
import tensorflow as tf
sig = tf.saved_model.load(sys.argv[1]).signatures["top_k"]
rows = json.loads(sys.argv[2])
width = max(len(r) for r in rows)
ids = [r + [""] * (width - len(r)) for r in rows]
out = sig(item_ids=tf.constant(ids), behaviors=tf.constant([[""] * width] * len(rows)),
          timestamps=tf.zeros([len(rows), width], tf.int64), k=tf.constant(5))
print(json.dumps({"items": out["item_ids"].numpy().astype(str).tolist(), "scores": out["scores"].numpy().tolist(),
                  "ok": out["ok"].numpy().tolist()}))
"""


def _served_equals_keras(tmp_path, gen, data):
    """The exported top_k, loaded in a fresh process, returns what the Keras model decodes
    (history items left out inside the search), for raw item-id histories longer and shorter
    than max_len; a history that holds the 26 items the model ranks first still gets the other 4
    from a beam of 20."""
    from ptum.data.batches import pad_batch, Rows
    from ptum.model.saving import load_model_dir

    r = _ptum("export-model", "--model", gen, "--output", str(tmp_path / "serving"))
    assert r.returncode == 0, r.stderr
    version = os.path.join(tmp_path / "serving", os.listdir(tmp_path / "serving")[0])
    histories = [[f"i{j % 30}" for j in range(s, s + n)] for s, n in ((0, 3), (7, 14), (20, 1), (1, 25))]
    histories[-1].append("i0")     # i1 .. i25 come after i0 (the cycle): only the 4 the model ranks last are unseen
    served = subprocess.run([sys.executable, "-c", SERVE, version, json.dumps(histories)], capture_output=True,
                            text=True)
    assert served.returncode == 0, served.stderr
    served = json.loads(served.stdout.strip().splitlines()[-1])
    model, meta, _ = load_model_dir(gen, generative=True)
    ds = contracts.open_dataset(data)
    vocab = ds.read_vocab_table(contracts.ITEMS_VOCAB)
    token = dict(zip(vocab.column("item_id").to_pylist(), vocab.column("token_id").to_pylist()))
    name = {t: i for i, t in token.items()}
    for h, got_items, got_scores, ok in zip(histories, served["items"], served["scores"], served["ok"]):
        toks = [token[i] for i in h]
        rows = Rows(np.array(["u"], object), np.array([0, len(toks)]), np.array(toks, np.int32),
                    np.ones(len(toks), np.int32), np.zeros(len(toks), np.int64))
        window = pad_batch(rows, np.array([0]), meta["max_len"])["item_ids"]
        items, scores = (np.asarray(x)[0] for x in model.beam_search(window, meta["beam_size"],
                                                                      exclude=np.array([toks], np.int32)))
        keep = [(name[int(i)], float(s)) for i, s in zip(items, scores) if i >= 0][:5]
        assert len(keep) == min(5, 30 - len(h)) and not {k[0] for k in keep} & set(h)
        pad = 5 - len(keep)       # slots without an item: "", not ok, -inf
        assert got_items == [k[0] for k in keep] + [""] * pad and ok == [True] * len(keep) + [False] * pad
        assert np.allclose(got_scores[:len(keep)], [k[1] for k in keep], atol=1e-4)
        assert all(s == -np.inf for s in got_scores[len(keep):])


def test_generative_training_resumes_after_a_kill(tmp_path):
    """Killed after an epoch's checkpoint, the same command resumes there (the model, its codes
    and trie are restored from the checkpoint) and the history keeps the epochs done."""
    import signal
    import time

    data = _sequence_dataset(tmp_path, users=60, items=12)
    gen = str(tmp_path / "gen")
    args = ["-m", "ptum.cli", "pretrain", "--data", data, "--output", gen, "--epochs", "3", *SMALL,
            "--set", "generative.codes=item_id"]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state, seen, deadline = os.path.join(gen, "checkpoints", "state.json"), {}, time.time() + 300
    while time.time() < deadline and proc.poll() is None and seen.get("epoch", 0) < 1:
        try:
            seen = json.load(open(state))
        except (OSError, ValueError):
            seen = {}
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= seen.get("epoch", 0) < 3 and not os.path.exists(os.path.join(gen, "metadata.json"))
    r = _ptum(*args[2:])
    assert r.returncode == 0, r.stderr
    assert f"after epoch {seen['epoch']}" in r.stdout + r.stderr
    history = json.load(open(os.path.join(gen, "history.json")))
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[0] == seen["history"][0]


# ------------------------------------------------------------------ catalog items without events
# Cold start in production: they get Semantic IDs from their content, and a generative model trained
# with generative.catalog_items returns them from the SavedModel (at most epsilon of a top-k).
SERVE_CATALOG = """
import json, sys
import tensorflow as tf
sig = tf.saved_model.load(sys.argv[1]).signatures["top_k"]
out = {}
for name, (history, k) in json.loads(sys.argv[2]).items():
    r = sig(item_ids=tf.constant([history]), behaviors=tf.constant([["click"] * len(history)]),
            timestamps=tf.constant([[1700000000 + 60 * i for i in range(len(history))]], tf.int64), k=tf.constant(k))
    out[name] = [i for i, ok in zip(r["item_ids"].numpy()[0].astype(str).tolist(), r["ok"].numpy()[0]) if ok]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def catalog_dataset(tmp_path_factory):
    """Generated logs whose catalog also lists items nobody has touched yet: each a copy of a
    known item's title and categories under a new id, and one with neither (no content: no code)."""
    from ptum.data.generate import generate
    from ptum.data.ingest import plan, reference

    logs = str(tmp_path_factory.mktemp("catalog_logs"))
    generate(logs, users=200, items=50, seed=4, mean_events=12)
    with open(os.path.join(logs, "items.csv"), newline="") as f:
        rows = list(csv.reader(f))
    new = [[f"new_{j:03d}", rows[1 + 7 * j][1], rows[1 + 7 * j][2]] for j in range(5)]
    with open(os.path.join(logs, "items.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows + new + [["bare_000", "", ""]])
    out = str(tmp_path_factory.mktemp("catalog_ds"))
    reference.run(plan.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv", output=out,
                                       items_catalog=os.path.join(logs, "items.csv")))
    return out, [r[0] for r in new]


def test_catalog_items_without_events_get_codes_after_the_vocabulary(catalog_dataset, tmp_path):
    from ptum.training.semantic_ids import learn_semantic_ids, read_semantic_ids

    data, new = catalog_dataset
    ds = contracts.open_dataset(data)
    extra = contracts.catalog_only_items(ds.read_vocab_table(contracts.CATALOG))
    assert set(new) <= set(extra)
    manifest = learn_semantic_ids(data, str(tmp_path / "sid"), codes=8, dim=16, seed=3, log=lambda s: None)
    assert manifest["parameters"]["catalog_only_items"] == len(extra)
    # The catalog item with neither title nor categories has no content: a counted dead letter.
    assert "bare_000" in extra and manifest["counts"]["items_dead_lettered"] == 1
    assert manifest["counts"]["by_source"]["content_catalog_only"] == len(extra) - 1
    table, _ = read_semantic_ids(str(tmp_path / "sid"))
    token = dict(zip(table.column("item_id").to_pylist(), table.column("token_id").to_pylist()))
    codes = dict(zip(table.column("item_id").to_pylist(), table.column("codes").to_pylist()))
    assert "bare_000" not in token
    assert all(token[i] == ds.num_item_tokens + j for j, i in enumerate(extra) if i != "bare_000")
    assert len({tuple(c) for c in codes.values()}) == len(codes)      # still one tuple per item
    # A new item with a known item's content lands on that item's codes (all but the collision token).
    catalog = ds.read_vocab_table(contracts.CATALOG)
    title = dict(zip(catalog.column("item_id").to_pylist(), catalog.column("title").to_pylist()))
    twins = [(n, k) for n in new for k, t in title.items() if k != n and k in token and token[k] < ds.num_item_tokens
             and t == title[n]]
    assert twins and all(codes[n][:3] == codes[k][:3] for n, k in twins)


def test_a_generative_model_serves_catalog_items_capped_by_epsilon(catalog_dataset, tmp_path):
    data, new = catalog_dataset
    ds = contracts.open_dataset(data)
    extra = contracts.catalog_only_items(ds.read_vocab_table(contracts.CATALOG))
    sid, gen = str(tmp_path / "sid"), str(tmp_path / "gen")
    r = _ptum("semantic-ids", "--data", data, "--output", sid, "--codes", "8", "--dim", "16")
    assert r.returncode == 0, r.stderr
    beam = 128        # wider than the catalog: the beam enumerates every coded item
    r = _ptum("pretrain", "--data", data, "--output", gen, "--epochs", "2", *SMALL, "--semantic-ids", sid,
              "--set", "generative.catalog_items=true", "--set", f"generative.beam_size={beam}")
    assert r.returncode == 0, r.stderr
    assert "1 of 6 catalog items without events have no code" in r.stdout + r.stderr     # bare_000: said
    meta = json.load(open(os.path.join(gen, "metadata.json")))
    assert meta["item_codes"]["catalog_items"] == len(extra) == meta["item_codes"]["catalog_items_coded"] + 1
    coded = len(extra) - 1
    r = _ptum("evaluate", "--model", gen, "--data", data, "--split", "test")
    assert r.returncode == 0, r.stderr
    r = _ptum("export-model", "--model", gen, "--output", str(tmp_path / "serving"))
    assert r.returncode == 0, r.stderr
    version = os.path.join(tmp_path / "serving", os.listdir(tmp_path / "serving")[0])
    vocab = ds.read_vocab_table(contracts.ITEMS_VOCAB)
    known = [i for i, t in zip(vocab.column("item_id").to_pylist(), vocab.column("token_id").to_pylist())
             if t >= contracts.FIRST_ITEM_ID]
    asks = {"all": [known[:4], beam], "ten": [known[:4], 10], "with_new": [known[:3] + [new[0]], beam]}
    served = subprocess.run([sys.executable, "-c", SERVE_CATALOG, version, json.dumps(asks)], capture_output=True,
                            text=True)
    assert served.returncode == 0, served.stderr
    got = json.loads(served.stdout.strip().splitlines()[-1])
    cap = max(1, int(0.1 * beam))
    assert sum(i in extra for i in got["all"]) == min(cap, coded)   # every coded item reachable, capped
    assert "bare_000" not in got["all"]
    assert set(got["all"]) <= set(known + extra) and not set(got["all"]) & set(known[:4])
    assert sum(i in extra for i in got["ten"]) <= 1 and len(got["ten"]) == 10
    # A catalog item in the history is a known token (its codes), so it is not offered again.
    assert new[0] not in got["with_new"] and sum(i in extra for i in got["with_new"]) == min(cap, coded - 1)
    # The served list is evaluation's: the beam, catalog items beside their decoded twins, history
    # left out, the epsilon cap (the new items copy known items' content: they have twins).
    from ptum.serving.saved_model import read_export_metadata

    assert read_export_metadata(version)["catalog_items_with_twins"] >= 1
    assert _evaluation_list(gen, ds, known[:4], extra, 10) == got["ten"]


def test_prefix_matches_merge_like_a_brute_force():
    """Each decoded item's new twins follow it (j-th twin 1e-6 (j + 1) lower), an item reached
    twice keeps its best score, dead slots stay out, best first."""
    from ptum.model.generative import merge_prefix_matches, prefix_groups

    rng = np.random.default_rng(5)
    codes = np.full((40, 3), -1)
    codes[3:] = np.stack([rng.integers(0, 3, 37), rng.integers(0, 3, 37), np.arange(37)], axis=1)
    new = np.arange(30, 40)
    groups = prefix_groups(codes, new, 2, max_members=2)
    assert groups.shape[1] <= 2 and not np.isin(groups[30:], np.arange(40)).any()
    items = rng.integers(3, 40, size=(6, 8))
    items[0, -2:] = -1
    scores = -np.sort(rng.random((6, 8)), axis=1).astype(np.float32)
    scores[0, -2:] = -1e9
    got, got_scores = (np.asarray(keras.ops.convert_to_numpy(x)) for x in merge_prefix_matches(items, scores, groups))
    for b in range(6):
        best = {}
        for it, sc in zip(items[b], scores[b]):
            if it < 3:
                continue
            best[it] = max(best.get(it, -np.inf), sc)
            for j, twin in enumerate(t for t in groups[it] if t >= 0):
                best[twin] = max(best.get(twin, -np.inf), sc - 1e-6 * (j + 1))
        n = len(best)
        assert sorted(got[b, :n].tolist()) == sorted(best) and (got[b, n:] == -1).all()
        assert np.allclose(got_scores[b, :n], [best[i] for i in got[b, :n]], atol=1e-7)
        assert (np.diff(got_scores[b, :n]) <= 0).all()


def _evaluation_list(model_dir, ds, history, extra, k):
    from ptum.evaluation.generative import beam_function, cap_new_items, catalog_cap
    from ptum.model.generative import merge_prefix_matches
    from ptum.model.saving import load_model_dir

    model = load_model_dir(model_dir, generative=True)[0]
    vocab = ds.read_vocab_table(contracts.ITEMS_VOCAB)
    name = dict(zip(vocab.column("token_id").to_pylist(), vocab.column("item_id").to_pylist()))
    token = {v: t for t, v in name.items()}
    name.update({ds.num_item_tokens + j: item for j, item in enumerate(extra)})
    beam = model.generative.beam_size
    toks = np.array([[token[i] for i in history]], np.int32)
    items, scores = beam_function(model, beam, excluding=True)(toks, toks)
    items, scores = merge_prefix_matches(items, scores, model.catalog_twins(ds.num_item_tokens, beam))
    items = np.asarray(keras.ops.convert_to_numpy(items))
    kept = (items >= contracts.FIRST_ITEM_ID) & ~np.isin(items, [token[i] for i in history])
    kept = cap_new_items(kept, items >= ds.num_item_tokens, catalog_cap(k, model.generative.catalog_items_epsilon))
    return [name[int(t)] for t in items[0][kept[0]][:k]]


def test_catalog_items_need_semantic_codes():
    from ptum.config import ConfigError, PTUMConfig

    with pytest.raises(ConfigError, match="catalog_items needs"):
        PTUMConfig.load(None, ["model.architecture=generative", "generative.codes=random",
                               "generative.catalog_items=true"]).validate()
