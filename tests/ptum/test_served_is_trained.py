"""The served model is the trained model: the same features, vocabularies, versions and
files from training to every serving signature and the batch export."""
import json
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from ptum.data import contracts  # noqa: E402

GAPS = sorted({g for k in range(0, 31) for g in (2 ** k - 1, 2 ** k)})  # 0, 1, 2, 3, 4, 7, 8, ...


def _write_events(path, users=48, items=30, seed=0, behaviors=("click", "like")):
    """Events whose time gaps hit every 2^k - 1 and 2^k up to 2^30."""
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,timestamp,behavior"]
    for u in range(users):
        t = 1_000_000 + u
        n = 14 + u % 9
        for j in range(n):
            t += GAPS[(u * 7 + j) % len(GAPS)]
            item = f"i{int(rng.integers(0, items)):03d}"
            lines.append(f"u{u:03d},{item},{t},{behaviors[int(rng.integers(0, len(behaviors)))]}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    from ptum.config import PTUMConfig
    from ptum.data.ingest import plan, reference
    from ptum.serving.saved_model import export_saved_model
    from ptum.training.pretrain import pretrain

    root = tmp_path_factory.mktemp("skew")
    csv = str(root / "events.csv")
    _write_events(csv)
    data = str(root / "data")
    reference.run(plan.TokenizeOptions(inputs=[csv], format="csv", output=data))
    cfg = PTUMConfig.load(None, ["model.embedding_dim=16", "model.num_blocks=1", "model.num_heads=1",
                                 "model.max_len=12", "train.epochs=1", "objective.num_negatives=8",
                                 "model.use_time=true", "model.use_behavior=true", "model.time_buckets=32"])
    model = str(root / "model")
    pretrain(data, model, cfg, log=lambda s: None)
    saved = export_saved_model(model, str(root / "serving"), version=42)
    return {"root": root, "csv": csv, "data": data, "model": model, "saved": saved}


def _training_path_embeddings(model_dir, data_dir):
    """User embeddings as training and evaluation compute them (numpy windows -> Keras)."""
    import keras

    from ptum.data.batches import Rows, user_batches
    from ptum.model.saving import load_model_dir

    encoder, meta, _ = load_model_dir(model_dir)
    rows = Rows.from_split(contracts.open_dataset(data_dir), "test")
    out = np.zeros((len(rows), meta["user_embedding"]["dim"]), np.float32)
    for idx, batch in user_batches(rows, 16, meta["max_len"], meta["length_buckets"], meta["time_buckets"]):
        out[idx] = keras.ops.convert_to_numpy(encoder.user_embedding(batch))
    return rows, out


def test_time_buckets_are_exact_at_every_power_of_two():
    import keras
    import tensorflow as tf

    from ptum.data import transforms

    gaps = np.array(GAPS + [2 ** 40, 2 ** 62 - 1], np.int64)
    ts = np.concatenate([[0], np.cumsum(gaps)])[None, :]
    valid = np.ones_like(ts, bool)
    expected = 1 + np.array([[0] + [min(31, int(g + 1).bit_length() - 1) for g in gaps]])
    np.testing.assert_array_equal(transforms.time_buckets(ts, valid, 32, np), expected)
    graph = tf.function(lambda t, v: transforms.time_buckets(t, v, 32, keras.ops))
    np.testing.assert_array_equal(graph(tf.constant(ts), tf.constant(valid)).numpy(), expected)


def test_every_serving_path_equals_the_trained_model(timed):
    import tensorflow as tf

    from ptum.data.features import row_to_example
    from ptum.serving.export_embeddings import read_embeddings, run

    rows, trained = _training_path_embeddings(timed["model"], timed["data"])
    table = contracts.open_dataset(timed["data"]).read_split("test").to_pylist()
    assert [r["user_id"] for r in table] == list(rows.user_ids)
    m = tf.saved_model.load(timed["saved"])
    sig = m.signatures
    served = sig["serving_default"](examples=tf.constant([row_to_example(r) for r in table]))["user_embedding"]
    np.testing.assert_allclose(served.numpy(), trained, atol=1e-5)

    width = max(r["length"] for r in table)
    pad = lambda key, fill: np.array([r[key] + [fill] * (width - r["length"]) for r in table], np.int64)  # noqa: E731
    tok = sig["embed_tokens"](item_ids=tf.constant(pad("item_ids", 0)), behavior_ids=tf.constant(pad("behavior_ids", 0)),
                              timestamps=tf.constant(pad("timestamps", 0)),
                              lengths=tf.constant([r["length"] for r in table], tf.int64))["user_embedding"]
    np.testing.assert_allclose(tok.numpy(), trained, atol=1e-5)

    # Raw ids: map tokens back through the dataset's vocabularies.
    ds = contracts.open_dataset(timed["data"])
    iv = ds.read_items_vocab()
    names = dict(zip(iv.column("token_id").to_pylist(), iv.column("item_id").to_pylist()))
    bv = ds.read_vocab_table(contracts.BEHAVIORS_VOCAB)
    bnames = dict(zip(bv.column("behavior_id").to_pylist(), bv.column("behavior").to_pylist()))
    raw_items = [[names[t] for t in r["item_ids"]] + [""] * (width - r["length"]) for r in table]
    raw_beh = [[bnames[b] for b in r["behavior_ids"]] + [""] * (width - r["length"]) for r in table]
    raw = sig["embed_sequences"](item_ids=tf.constant(raw_items), behaviors=tf.constant(raw_beh),
                                 timestamps=tf.constant(pad("timestamps", 0)))["user_embedding"]
    np.testing.assert_allclose(raw.numpy(), trained, atol=1e-5)

    out = str(timed["root"] / "emb")
    run(timed["saved"], timed["data"], out, batch_rows=16)
    emb = read_embeddings(out)
    by_user = dict(zip(emb.column("user_id").to_pylist(), emb.column("embedding").to_pylist()))
    batch = np.array([by_user[u] for u in rows.user_ids], np.float32)
    np.testing.assert_allclose(batch, trained, atol=1e-5)


def test_behavior_and_word_vocabularies_are_frozen_and_hashed(timed, tmp_path):
    from ptum.data.ingest import plan, reference

    src = contracts.open_dataset(timed["data"])
    # Same users, but "like" now outnumbers "click", and a new behavior type appears.
    csv = str(tmp_path / "later.csv")
    _write_events(csv, users=20, seed=5, behaviors=("like", "like", "like", "click", "share"))
    frozen = str(tmp_path / "frozen")
    m = reference.run(plan.TokenizeOptions(inputs=[csv], format="csv", output=frozen,
                                           vocab_from=timed["data"]))
    ds = contracts.open_dataset(frozen)
    assert ds.vocab_hash == src.vocab_hash
    a = src.read_vocab_table(contracts.BEHAVIORS_VOCAB)
    b = ds.read_vocab_table(contracts.BEHAVIORS_VOCAB)
    assert b.column("behavior").to_pylist() == a.column("behavior").to_pylist()
    assert b.column("behavior_id").to_pylist() == a.column("behavior_id").to_pylist()
    shares = sum(1 for line in open(csv).read().splitlines()[1:] if line.endswith(",share"))
    assert shares and m["counts"]["oov_behavior_events"] == shares
    beh = np.concatenate([np.asarray(x, np.int32) for x in ds.read_split("test").column("behavior_ids").to_pylist()])
    assert beh.max() < src.num_behavior_tokens and (beh == contracts.BEHAVIOR_UNKNOWN_ID).sum() > 0
    # A fresh vocabulary from the same events: the item ids may agree, the hash must not.
    fresh = str(tmp_path / "fresh")
    reference.run(plan.TokenizeOptions(inputs=[csv], format="csv", output=fresh))
    f = contracts.open_dataset(fresh)
    assert f.manifest["vocab_hashes"]["behaviors"] != src.manifest["vocab_hashes"]["behaviors"]
    assert f.vocab_hash != src.vocab_hash
    # The frozen dataset is served by the model without an out-of-range behavior id.
    from ptum.serving.export_embeddings import run
    run(timed["saved"], frozen, str(tmp_path / "emb"), batch_rows=8)


def test_frozen_title_words(tmp_path):
    import pyarrow as pa

    from ptum.data.ingest import vocabulary

    cat = pa.table({"item_id": ["a", "b"], "title": ["red shoe", "blue hat"], "categories": ["x", "y"]})
    items = pa.table({"item_id": ["a", "b"], "token_id": [3, 4], "count": [1, 1]})
    catalog, words = vocabulary.build_catalog(cat, items, 1, 8, frozen_words={"red": 2, "hat": 3})
    assert dict(zip(words.column("word").to_pylist(), words.column("word_id").to_pylist())) == {"red": 2, "hat": 3}
    assert catalog.column("word_ids").to_pylist() == [[2, contracts.WORD_OOV_ID], [contracts.WORD_OOV_ID, 3]]


def test_old_format_datasets_are_refused(timed, tmp_path):
    old = str(tmp_path / "old")
    shutil.copytree(timed["data"], old)
    with open(os.path.join(old, contracts.MANIFEST)) as f:
        m = json.load(f)
    m["format_version"] = 1
    with open(os.path.join(old, contracts.MANIFEST), "w") as f:
        json.dump(m, f)
    with pytest.raises(contracts.DatasetError, match="tokenize again"):
        contracts.open_dataset(old)


def test_a_nan_model_fails_evaluation_and_coverage_is_the_top_10(timed):
    import keras

    from ptum.data.batches import Rows
    from ptum.evaluation.ranking import NonFiniteScores, item_table_numpy, rank_metrics
    from ptum.model.encoder import UserEmbedder
    from ptum.model.saving import load_model_dir

    encoder, meta, _ = load_model_dir(timed["model"])
    rows = Rows.from_split(contracts.open_dataset(timed["data"]), "test")
    args = (rows, meta["max_len"], meta["length_buckets"], meta["time_buckets"])
    m = rank_metrics(UserEmbedder(encoder), *args, ks=(10, 20))
    # Coverage by hand: the history-filtered top 10 of every user.
    from ptum.data.batches import eval_batches
    table = item_table_numpy(encoder)
    top = set()
    for idx, batch in eval_batches(rows, 512, *args[1:]):
        s = np.asarray(keras.ops.convert_to_numpy(encoder.user_embedding(batch))) @ table.T
        s[:, :contracts.FIRST_ITEM_ID] = -np.inf
        for r, i in enumerate(idx):
            hist = rows.items[rows.offsets[i]:rows.offsets[i + 1] - 1]
            target = rows.items[rows.offsets[i + 1] - 1]
            s[r, [h for h in hist if h != target]] = -np.inf
            top.update(np.argsort(-s[r], kind="stable")[:10].tolist())
    assert m["coverage@10"] == pytest.approx(len(top) / (table.shape[0] - contracts.FIRST_ITEM_ID))
    w = encoder.item_embedding.embeddings
    w.assign(np.full(w.shape, np.nan, np.float32))
    with pytest.raises(NonFiniteScores):
        rank_metrics(UserEmbedder(encoder), *args)


def test_serving_inputs_are_checked(timed):
    import tensorflow as tf

    sig = tf.saved_model.load(timed["saved"]).signatures
    ok = dict(item_ids=tf.constant([[3, 4]], tf.int64), behavior_ids=tf.constant([[2, 2]], tf.int64),
              timestamps=tf.constant([[1, 2]], tf.int64), lengths=tf.constant([2], tf.int64))
    assert sig["embed_tokens"](**ok)["user_embedding"].shape[0] == 1
    bad = [dict(ok, behavior_ids=tf.constant([[2]], tf.int64)),             # shorter than item_ids
           dict(ok, timestamps=tf.constant([[1, 2, 3]], tf.int64)),         # longer
           dict(ok, item_ids=tf.constant([[-1, 4]], tf.int64)),             # negative id
           dict(ok, item_ids=tf.constant([[3, 10 ** 6]], tf.int64)),        # past the vocabulary
           dict(ok, behavior_ids=tf.constant([[2, 99]], tf.int64)),         # unknown behavior id
           dict(ok, lengths=tf.constant([3], tf.int64)),                    # longer than the row
           dict(ok, lengths=tf.constant([2, 2], tf.int64)),                 # one length too many
           dict(ok, item_ids=tf.constant([[3, 0]], tf.int64)),              # padding inside the length
           dict(ok, item_ids=tf.constant([[1, 4]], tf.int64)),              # the mask token
           dict(ok, behavior_ids=tf.constant([[2, 0]], tf.int64)),          # behavior padding
           dict(ok, timestamps=tf.constant([[1, 10 ** 18]], tf.int64)),     # far past year 9999
           dict(ok, timestamps=tf.constant([[-(2 ** 63), 2]], tf.int64)),   # int64 minimum
           dict(ok, timestamps=tf.constant([[5, 2]], tf.int64))]            # decreasing
    for b in bad:
        with pytest.raises(tf.errors.InvalidArgumentError):
            sig["embed_tokens"](**b)
    with pytest.raises(tf.errors.InvalidArgumentError):
        sig["embed_sequences"](item_ids=tf.constant([["i001", "i002"]]), behaviors=tf.constant([["click"]]),
                               timestamps=tf.constant([[1, 2]], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError):  # a hole in the right padding
        sig["embed_sequences"](item_ids=tf.constant([["i001", "", "i002"]]),
                               behaviors=tf.constant([["click", "", "click"]]),
                               timestamps=tf.constant([[1, 0, 2]], tf.int64))
    # A user who has seen every item: nothing reserved or seen comes back, the rest is marked.
    iv = contracts.open_dataset(timed["data"]).read_items_vocab().column("item_id").to_pylist()
    top = sig["top_k"](item_ids=tf.constant([iv[:-2]]), behaviors=tf.constant([["click"] * (len(iv) - 2)]),
                       timestamps=tf.constant([list(range(len(iv) - 2))], tf.int64), k=tf.constant(5))
    got = [x.decode() for x in top["item_ids"].numpy()[0]]
    assert sorted(x for x in got if x) == sorted(iv[-2:])
    assert got.count("") == 3 and top["ok"].numpy()[0].tolist() == [True, True, False, False, False]
    assert not any(x.startswith("<") for x in got)
    # Padding beyond the length is not checked (any value may pad); an empty history is flagged.
    padded = dict(ok, item_ids=tf.constant([[3, 0]], tf.int64), timestamps=tf.constant([[1, -5]], tf.int64),
                  lengths=tf.constant([1], tf.int64))
    assert sig["embed_tokens"](**padded)["empty_history"].numpy().tolist() == [False]
    empty = sig["embed_tokens"](**dict(padded, lengths=tf.constant([0], tf.int64)))
    assert empty["empty_history"].numpy().tolist() == [True]
    top = sig["top_k"](item_ids=tf.constant([["", ""], [iv[0], ""]]), behaviors=tf.constant([["", ""], ["click", ""]]),
                       timestamps=tf.constant([[0, 0], [5, 0]], tf.int64), k=tf.constant(3))
    assert top["empty_history"].numpy().tolist() == [True, False]
    assert top["ok"].numpy().tolist() == [[False] * 3, [True] * 3]


def test_one_version_and_a_verified_digest(timed, tmp_path):
    import tensorflow as tf

    from ptum.serving.export_embeddings import ExportError, read_embeddings, run
    from ptum.serving.saved_model import UntrustedModel, read_export_metadata, saved_model_digest, verify_saved_model

    meta = read_export_metadata(timed["saved"])
    assert meta["version"] == 42 and meta["saved_model_sha256"] == saved_model_digest(timed["saved"])
    # From a model folder: the export builds one SavedModel; its directory is the version everywhere.
    out = str(tmp_path / "emb")
    m = run(timed["model"], timed["data"], out, batch_rows=32)
    version_dirs = os.listdir(os.path.join(out, "saved_model"))
    assert len(version_dirs) == 1 and m["model_version"] == version_dirs[0]
    saved = os.path.join(out, "saved_model", version_dirs[0])
    with open(os.path.join(saved, "assets.extra", "ptum_metadata.json")) as f:
        assert str(json.load(f)["version"]) == version_dirs[0]
    assert set(read_embeddings(out).column("model_version").to_pylist()) == {version_dirs[0]}
    assert m["model_verified"] == "expected digest"

    # A crafted SavedModel with a copied metadata asset: its graph would write a file.
    evil = str(tmp_path / "evil" / "9")
    marker = str(tmp_path / "pwned.txt")

    class Evil(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64)] * 3 + [tf.TensorSpec([None], tf.int64)])
        def embed_tokens(self, item_ids, behavior_ids, timestamps, lengths):
            tf.io.write_file(marker, "x")
            return {"user_embedding": tf.zeros([tf.shape(item_ids)[0], 16])}

    mod = Evil()
    tf.saved_model.save(mod, evil, signatures={"embed_tokens": mod.embed_tokens})
    os.makedirs(os.path.join(evil, "assets.extra"), exist_ok=True)
    shutil.copy(os.path.join(timed["saved"], "assets.extra", "ptum_metadata.json"),
                os.path.join(evil, "assets.extra", "ptum_metadata.json"))
    with pytest.raises(ExportError, match="digest"):
        run(evil, timed["data"], str(tmp_path / "e1"))
    # Even with a self-consistent digest, a trusted expected digest refuses it.
    meta_path = os.path.join(evil, "assets.extra", "ptum_metadata.json")
    with open(meta_path) as f:
        em = json.load(f)
    em["saved_model_sha256"] = saved_model_digest(evil)
    with open(meta_path, "w") as f:
        json.dump(em, f)
    with pytest.raises(ExportError, match="expected"):
        run(evil, timed["data"], str(tmp_path / "e2"), expected_sha256=meta["saved_model_sha256"])
    assert not os.path.exists(marker)
    # A single changed byte in the real model is caught too.
    copy = str(tmp_path / "copy" / "42")
    shutil.copytree(timed["saved"], copy)
    var = [os.path.join(copy, "variables", f) for f in os.listdir(os.path.join(copy, "variables"))
           if f.startswith("variables.data")][0]
    with open(var, "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(UntrustedModel):
        verify_saved_model(copy)


def test_a_dataset_on_a_non_local_filesystem(timed, tmp_path):
    from ptum.config import PTUMConfig
    from ptum.serving.saved_model import export_saved_model
    from ptum.training.pretrain import pretrain

    import pyarrow.fs as pafs

    from ptum import fs

    # Its own scheme (`ptumtest://<local path>`), served by a pyarrow filesystem: the path a
    # dataset on gs://, s3:// or hdfs:// takes through ptum.fs.
    fs.register("ptumtest", pafs.LocalFileSystem())
    remote = "ptumtest://" + str(timed["data"])
    ds = contracts.open_dataset(remote)
    assert ds.vocab_hash == contracts.open_dataset(timed["data"]).vocab_hash
    cfg = PTUMConfig.load(None, ["model.embedding_dim=8", "model.num_blocks=1", "model.num_heads=1",
                                 "model.max_len=8", "train.epochs=1", "objective.num_negatives=4"])
    model = str(tmp_path / "model")
    pretrain(remote, model, cfg, log=lambda s: None)
    for name in (contracts.ITEMS_VOCAB, contracts.BEHAVIORS_VOCAB):
        assert os.path.exists(os.path.join(model, "vocab", name)), name
    export_saved_model(model, str(tmp_path / "serving"), version=1)
    fs.unregister("ptumtest")
