"""PTUM model, pre-training and evaluation on generated data."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from ptum.config import ConfigError, PTUMConfig  # noqa: E402
from ptum.data import contracts  # noqa: E402

SMALL = ["model.embedding_dim=16", "model.num_blocks=1", "model.num_heads=1", "model.max_len=20",
         "train.batch_size=64", "objective.num_negatives=32", "train.patience=3"]


def cli(*args, env=None, check=True):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    r = subprocess.run([sys.executable, "-m", "ptum.cli", *args], capture_output=True, text=True, env=e)
    if check and r.returncode != 0:
        raise AssertionError(f"ptum {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def sets(items):
    return [x for s in items for x in ("--set", s)]


def small_cfg(*extra):
    return PTUMConfig.load(None, SMALL + list(extra))


def test_config_yaml_overrides_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  num_blocks: 3\nobjective:\n  mbp: true\n")
    cfg = PTUMConfig.load(str(p), ["train.epochs=7", "objective.negatives=full"])
    assert (cfg.model.num_blocks, cfg.objective.mbp, cfg.train.epochs, cfg.objective.negatives) == (3, True, 7, "full")
    assert PTUMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        PTUMConfig.load(None, ["model.blocks=2"])
    with pytest.raises(ConfigError, match="causal"):
        PTUMConfig.load(None, ["model.attention=bidirectional", "objective.nbp_from=every"])
    with pytest.raises(ConfigError, match="at least one"):
        PTUMConfig.load(None, ["objective.nbp=false", "objective.mbp=false"])


@pytest.mark.parametrize("overrides", [
    # PTUM-faithful: bidirectional, pooled readout, 4 sampled negatives, K=2, NBP from the last position.
    ["model.attention=bidirectional", "model.user_vector=pooled", "objective.mbp=true",
     "objective.mbp_readout=pooled", "objective.negatives=sampled", "objective.num_negatives=4",
     "objective.k=2", "objective.nbp_from=last", "objective.exclude_history=true"],
    ["objective.mbp=true", "objective.nbp=false", "model.attention=bidirectional", "objective.negatives=full"],
    ["objective.k=2", "objective.negatives=shared", "model.use_text=true", "model.use_behavior=false",
     "objective.exclude_history=true"],
])
def test_objectives_train_and_round_trip(clean_dataset, overrides, tmp_path, recwarn):
    import keras

    from ptum.data.batches import Rows, TrainBatches
    from ptum.model.encoder import build_encoder_for
    from ptum.model.objectives import build_pretrainer
    from ptum.training.pretrain import fill_from_dataset, train_window

    ds = contracts.open_dataset(clean_dataset[0])
    given = small_cfg(*overrides)
    cfg, words = fill_from_dataset(given, ds)
    assert given.model.num_items == 0 and cfg.model.num_items == ds.num_item_tokens   # caller's config untouched
    cfg.validate()
    enc = build_encoder_for(cfg, words)
    pre = build_pretrainer(cfg, enc)
    pre.compile(optimizer=keras.optimizers.Adam(1e-3))
    batches = TrainBatches(Rows.from_split(ds, "train"), 64, train_window(cfg), [8], 0,
                           cfg.model.time_buckets if cfg.model.use_time else 0)
    hist = pre.fit(batches, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    # Config round trip and save/load give identical user embeddings.
    batch = batches[0]
    before = keras.ops.convert_to_numpy(enc.user_embedding(batch))
    path = str(tmp_path / "enc.keras")
    enc.save(path)
    loaded = keras.saving.load_model(path)
    after = keras.ops.convert_to_numpy(loaded.user_embedding(batch))
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-6)
    assert type(enc).from_config(enc.get_config()).get_config() == enc.get_config()
    # The encoder's Keras config is the config's model section, whole (declared once).
    assert enc.get_config()["config"] == cfg.model.model_dump()
    assert pre.get_config()["objective"] == cfg.objective.model_dump()
    # A model saved by the earlier version (keyword config) loads to the same network.
    m = cfg.model
    old = {"num_items": m.num_items, "embedding_dim": m.embedding_dim, "num_blocks": m.num_blocks,
           "num_heads": m.num_heads, "ff_dim": enc.ff_dim, "dropout": m.dropout, "max_len": m.max_len,
           "attention": m.attention, "user_vector": m.user_vector, "num_behaviors": enc.num_behaviors,
           "time_buckets": enc.time_buckets, "num_words": enc.num_words, "text_max_words": m.text_max_words,
           "text_heads": m.text_heads, "future_positions": m.future_positions, "embedding_vector": m.user_embedding,
           "profile_newest": m.profile_newest, "pooling": enc.pooling, "name": "user_encoder", "trainable": True}
    legacy = type(enc).from_config(old)
    assert [(w.path, w.shape) for w in legacy.weights] == [(w.path, w.shape) for w in enc.weights]
    legacy.set_weights(enc.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(legacy.user_embedding(batch)), before)
    # Every variable handed to the optimizer gets a gradient (without NBP the future-position
    # embeddings are not handed over: nothing reads them).
    assert not [str(w.message) for w in recwarn if "Gradients do not exist" in str(w.message)]


@pytest.mark.parametrize("negatives", ["full", "shared", "sampled"])
def test_history_items_are_no_negatives(negatives):
    """objective.exclude_history: the softmax over the target and the items not in the row's
    history (repeats counted once; a target in the history stays the positive), by brute force."""
    import keras

    from ptum.model.objectives import CandidateScoring, first_occurrences

    rng = np.random.default_rng(0)
    v, n, h, d = 30, 7, 5, 4
    q, table = rng.normal(size=(n, d)).astype("float32"), rng.normal(size=(v, d)).astype("float32")
    targets, history = rng.integers(3, v, n), rng.integers(3, v, (n, h))
    history[:, 0] = contracts.PAD_ID
    history[1, 2], history[2, 3] = targets[1], history[2, 4]
    valid = np.ones(n, bool)
    # Enough sampled negatives to draw every item: the sampled losses then equal the full one.
    scoring = CandidateScoring(negatives, num_negatives=4000, logq_correction=False, seed=1)
    once = keras.ops.convert_to_numpy(first_occurrences(history))
    assert once[2, 4] == contracts.PAD_ID and once[2, 3] == history[2, 3]      # the repeat goes, once
    got = float(keras.ops.convert_to_numpy(scoring(q, targets, valid, table, once)))
    want = []
    for row in range(n):
        logits = table @ q[row]
        keep = [j for j in range(contracts.FIRST_ITEM_ID, v) if j == targets[row] or j not in set(history[row])]
        want.append(np.log(np.exp(logits[keep]).sum()) - logits[targets[row]])
    if negatives == "full":
        assert got == pytest.approx(np.mean(want), rel=1e-5)
    else:
        # Sampled with replacement: each kept item counted as often as it was drawn, history never.
        plain = float(keras.ops.convert_to_numpy(scoring(q, targets, valid, table)))
        assert got < plain and np.isfinite(got)


@pytest.mark.parametrize("with_history", [False, True])
def test_label_smoothing_spreads_the_target_over_the_candidates(with_history):
    """objective.label_smoothing e (full softmax): (1 - e) * CE + e * the mean of -log p over the
    row's candidates (the target and every real item outside the history), by brute force."""
    import keras

    from ptum.model.objectives import CandidateScoring, first_occurrences

    rng = np.random.default_rng(1)
    v, n, h, d, e = 25, 6, 4, 3, 0.2
    q, table = rng.normal(size=(n, d)).astype("float32"), rng.normal(size=(v, d)).astype("float32")
    targets, history = rng.integers(3, v, n), rng.integers(3, v, (n, h))
    history[:, 0] = contracts.PAD_ID
    history[1, 2], history[2, 3] = targets[1], history[2, 1]
    once = keras.ops.convert_to_numpy(first_occurrences(history)) if with_history else None
    got = float(keras.ops.convert_to_numpy(CandidateScoring("full", label_smoothing=e)(
        q, targets, np.ones(n, bool), table, once)))
    want = []
    for row in range(n):
        logits = table @ q[row]
        left = set(history[row]) if with_history else set()
        keep = [j for j in range(contracts.FIRST_ITEM_ID, v) if j == targets[row] or j not in left]
        logp = logits[keep] - np.log(np.exp(logits[keep]).sum())
        want.append(-(1 - e) * logp[keep.index(targets[row])] - e * logp.mean())
    assert got == pytest.approx(np.mean(want), rel=1e-5)
    plain = float(keras.ops.convert_to_numpy(CandidateScoring("full")(q, targets, np.ones(n, bool), table, once)))
    assert plain != pytest.approx(got, rel=1e-3)


def test_pretrain_then_evaluate_cli(clean_dataset, tmp_path):
    data, _ = clean_dataset
    out = str(tmp_path / "model")
    cli("pretrain", "--data", data, "--output", out, "--epochs", "6", *sets(SMALL))
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["vocab_hash"] == contracts.open_dataset(data).vocab_hash
    assert meta["user_embedding"]["readout"] == "last"
    for f in ("encoder.keras", "config.json", "history.json", "vocab/items.parquet"):
        assert os.path.exists(os.path.join(out, f)), f
    r = cli("evaluate", "--model", out, "--data", data, "--split", "test", "--output", str(tmp_path / "m.json"))
    m = json.loads(r.stdout)
    assert json.load(open(tmp_path / "m.json")) == m
    for k in ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "ndcg@10_unfiltered", "recall@10_unfiltered",
              "coverage@10"):
        assert 0.0 <= m[k] <= 1.0
    # The generated logs have sequential structure: a trained model beats random ranking by far.
    n_items = contracts.open_dataset(data).manifest["counts"]["items"]
    assert m["recall@10"] > 5 * (10 / n_items)


def test_warm_start_only_from_a_compatible_model(clean_dataset, tmp_path):
    from ptum.model.saving import load_model_dir
    from ptum.training.pretrain import pretrain

    data, _ = clean_dataset
    base = str(tmp_path / "base")
    pretrain(data, base, small_cfg("train.epochs=2"), log=lambda s: None)
    # One epoch at a learning rate too small to move the weights: the model starts (and so
    # stays) where the base model ended.
    warm = str(tmp_path / "warm")
    meta = pretrain(data, warm, small_cfg("train.epochs=1", "train.learning_rate=1e-9"), log=lambda s: None,
                    warm_start=base)
    assert meta["warm_start"]["used"] is True
    a, b = load_model_dir(base)[0], load_model_dir(warm)[0]
    assert len(a.get_weights()) == len(b.get_weights())
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=1e-5)
    # Another model config: trains from scratch and says why.
    other = pretrain(data, str(tmp_path / "other"), small_cfg("train.epochs=1", "model.embedding_dim=8"),
                     log=lambda s: None, warm_start=base)
    assert other["warm_start"]["used"] is False and "embedding_dim" in other["warm_start"]["reason"]


def test_reloaded_model_gives_identical_embeddings(clean_dataset, tmp_path):
    import keras

    from ptum.data.batches import Rows, user_batches
    from ptum.model.saving import load_model_dir
    from ptum.training.pretrain import pretrain

    data, _ = clean_dataset
    out = str(tmp_path / "m")
    cfg = small_cfg("train.epochs=1")
    pretrain(data, out, cfg, log=lambda s: None)
    enc1, meta, _ = load_model_dir(out)
    enc2, _, _ = load_model_dir(out)
    rows = Rows.from_split(contracts.open_dataset(data), "test")
    idx, batch = next(user_batches(rows, 32, meta["max_len"], meta["length_buckets"], meta["time_buckets"]))
    a = keras.ops.convert_to_numpy(enc1.user_embedding(batch))
    b = keras.ops.convert_to_numpy(enc2.user_embedding(batch))
    np.testing.assert_array_equal(a, b)


def test_resume_after_kill_matches_uninterrupted(clean_dataset, tmp_path):
    """Killed mid-epoch (after a step checkpoint): the resumed run skips the batches already
    done and ends where the uninterrupted one does."""
    data, _ = clean_dataset
    args = ["--epochs", "4", *sets(SMALL + ["train.deterministic=true", "train.patience=10",
                                            "train.checkpoint_every_steps=2"])]
    full = str(tmp_path / "full")
    cli("pretrain", "--data", data, "--output", full, *args)
    killed = str(tmp_path / "killed")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-m", "ptum.cli", "pretrain", "--data", data, "--output", killed,
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = os.path.join(killed, "checkpoints", "state.json")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            seen = json.load(open(state))
        except (OSError, ValueError):
            seen = {}
        if seen.get("epoch", 0) >= 1 and seen.get("step", 0) > 0:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen.get("step", 0) > 0, seen
    assert not os.path.exists(os.path.join(killed, "metadata.json")), "killed run must not look finished"
    assert json.load(open(state))["epoch"] < 4
    r = cli("pretrain", "--data", data, "--output", killed, *args)
    assert "resum" in (r.stdout + r.stderr)
    h_full = json.load(open(os.path.join(full, "history.json")))
    h_res = json.load(open(os.path.join(killed, "history.json")))
    assert len(h_full) == len(h_res) == 4
    for a, b in zip(h_full, h_res):
        assert abs(a["loss"] - b["loss"]) < 1e-4
        assert abs(a["valid_ndcg@10"] - b["valid_ndcg@10"]) < 1e-4


def test_more_epochs_go_on_from_the_checkpoint_another_model_starts_over(clean_dataset, tmp_path):
    """Raising train.epochs (or the time limit, or patience) after a finished run trains on from
    its checkpoint; a change to what is trained (here the learning rate) starts over."""
    from ptum.training.pretrain import pretrain

    data, _ = clean_dataset
    out, lines = str(tmp_path / "m"), []
    pretrain(data, out, small_cfg("train.epochs=2", "train.patience=10"), log=lines.append)
    first = json.load(open(os.path.join(out, "history.json")))
    # A checkpoint written before a config key existed (here label_smoothing) still resumes.
    state_path = os.path.join(out, "checkpoints", "state.json")
    state = json.load(open(state_path))
    del state["config"]["objective"]["label_smoothing"]
    json.dump(state, open(state_path, "w"))
    pretrain(data, out, small_cfg("train.epochs=3", "train.patience=10"), log=lines.append)
    assert any("differs only in train.epochs 2 -> 3" in line for line in lines)
    history = json.load(open(os.path.join(out, "history.json")))
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[:2] == first
    assert json.load(open(os.path.join(out, "config.json")))["train"]["epochs"] == 3
    lines.clear()
    pretrain(data, out, small_cfg("train.epochs=3", "train.patience=10", "train.learning_rate=0.01"),
             log=lines.append)
    assert any("starting over" in line for line in lines)
    assert [h["epoch"] for h in json.load(open(os.path.join(out, "history.json")))] == [1, 2, 3]


def test_bad_inputs_give_clear_errors(clean_dataset, tmp_path):
    from ptum.training.pretrain import TrainingError, pretrain

    data, logs = clean_dataset
    # NaN loss: no model that looks finished.
    out = str(tmp_path / "nan")
    with pytest.raises(TrainingError, match="loss is"):
        pretrain(data, out, small_cfg("train.learning_rate=1e30", "train.clipnorm=0", "train.epochs=3"),
                 log=lambda s: None)
    assert not os.path.exists(os.path.join(out, "metadata.json"))
    # Missing split.
    from ptum.data.ingest import formats, plan, reference
    hashed = str(tmp_path / "hashed")
    reference.run(plan.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv", output=hashed,
                                       split="user-hash"))
    r = cli("pretrain", "--data", hashed, "--output", str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and "'train' split" in r.stderr
    # Uncommitted dataset.
    os.remove(os.path.join(hashed, "manifest.json"))
    r = cli("pretrain", "--data", hashed, "--output", str(tmp_path / "x"), check=False)
    assert r.returncode == 2 and "not committed" in r.stderr
    # Empty dataset.
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("user_id,item_id,timestamp\n")
    empty = str(tmp_path / "empty")
    with pytest.raises(formats.InputError, match="hold no record .empty, or a header line only."):   # refused unless asked for
        reference.run(plan.TokenizeOptions(inputs=[str(empty_csv)], format="csv", output=empty))
    assert os.listdir(empty) in ([], [contracts.LOCK_FILE])          # nothing but the lock file
    reference.run(plan.TokenizeOptions(inputs=[str(empty_csv)], format="csv", output=empty, allow_empty=True))
    with pytest.raises(TrainingError, match="no sequence"):
        pretrain(empty, str(tmp_path / "e"), small_cfg(), log=lambda s: None)
    # Vocabulary mismatch at evaluation.
    other_csv = tmp_path / "other.csv"
    other_csv.write_text("user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    other = str(tmp_path / "other")
    reference.run(plan.TokenizeOptions(inputs=[str(other_csv)], format="csv", output=other))
    model = str(tmp_path / "m")
    pretrain(data, model, small_cfg("train.epochs=1"), log=lambda s: None)
    r = cli("evaluate", "--model", model, "--data", other, check=False)
    assert r.returncode == 2 and "does not match" in r.stderr
    r = cli("evaluate", "--model", str(tmp_path / "nan"), "--data", data, check=False)
    assert r.returncode == 2 and "not a finished model" in r.stderr


def test_training_modules_import_without_tensorflow():
    # Keras needs a backend: without TensorFlow that is JAX (a dev extra of the modern stack;
    # Keras 3.12's numpy backend imports JAX too).
    pytest.importorskip("jax")
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('tensorflow', 'apache_beam', 'tfx'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import os; os.environ['KERAS_BACKEND'] = 'jax'\n"
            "import ptum.model.encoder, ptum.model.objectives, ptum.data.batches, ptum.evaluation.ranking, ptum.training.pretrain, ptum.config\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_trains_under_jax(clean_dataset, tmp_path):
    pytest.importorskip("jax")
    data, _ = clean_dataset
    out = str(tmp_path / "jax")
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'tensorflow':\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from ptum.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    # The profile vector and the bag objective train under JAX too (keras.ops only).
    r = subprocess.run([sys.executable, "-c", code, "pretrain", "--data", data, "--output", out, "--epochs", "2",
                        *sets(SMALL + ["model.user_embedding=profile", "objective.bag=true"])],
                       capture_output=True, text=True,
                       env=dict(os.environ, KERAS_BACKEND="jax"))
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["stack"].get("jax") and meta["valid"]["ndcg@10"] > 0
    assert meta["user_embedding"]["vector"] == "profile"


def test_weight_average_is_the_model_written_the_checkpoint_trains_on(clean_dataset, tmp_path):
    """train.ema_momentum: the model folder holds the moving average of the weights (one epoch:
    the best epoch is the last), the checkpoint the weights training goes on from."""
    import keras

    from ptum.model.saving import load_model_dir
    from ptum.training.pretrain import pretrain

    data, _ = clean_dataset
    out = str(tmp_path / "m")
    pretrain(data, out, small_cfg("train.epochs=1", "train.ema_momentum=0.9"), log=lambda s: None)
    checkpoint = keras.saving.load_model(os.path.join(out, "checkpoints", "latest.keras"), compile=True)
    own = [keras.ops.convert_to_numpy(v.value) for v in checkpoint.trainable_variables]
    average = [keras.ops.convert_to_numpy(v.value) for v in checkpoint.optimizer._model_variables_moving_average]
    encoder, _, _ = load_model_dir(out)
    kept = [keras.ops.convert_to_numpy(v.value) for v in encoder.trainable_variables]

    def among(w, pool):
        return any(p.shape == w.shape and np.array_equal(p, w) for p in pool)

    assert kept and all(among(w, average) for w in kept)
    assert sum(not among(w, own) for w in kept) >= len(kept) // 2


def test_the_last_epoch_is_validated_whatever_eval_every_says(clean_dataset, tmp_path):
    """train.eval_every validates every n-th epoch, and the run's last epoch as well: a run
    shorter than n still writes a model, and the last epoch's weights are always considered."""
    from ptum.training.pretrain import pretrain

    data, _ = clean_dataset
    out = str(tmp_path / "m")
    pretrain(data, out, small_cfg("train.epochs=3", "train.eval_every=2", "train.patience=10"), log=lambda s: None)
    validated = [h["epoch"] for h in json.load(open(os.path.join(out, "history.json"))) if "valid_ndcg@10" in h]
    assert validated == [2, 3]
    out = str(tmp_path / "short")
    pretrain(data, out, small_cfg("train.epochs=1", "train.eval_every=5"), log=lambda s: None)
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["best_epoch"] == 1 and meta["epochs_run"] == 1


def test_dataset_loss_average_weighs_every_target_the_same_in_any_batch(clean_dataset):
    """objective.loss_average=dataset: a batch's NBP loss is its summed cross-entropy over its
    rows x the data's mean targets per row, so two batches weighted by their rows add up to the
    batch that holds both (short histories' targets weigh no more than long ones'); the batch
    mean (the default) does not."""
    import keras

    from ptum.data.batches import Rows, mean_targets_per_row, pad_batch
    from ptum.model.encoder import build_encoder_for
    from ptum.model.objectives import build_pretrainer
    from ptum.training.pretrain import fill_from_dataset, train_window

    ds = contracts.open_dataset(clean_dataset[0])
    rows = Rows.from_split(ds, "train")
    order = np.argsort(rows.lengths, kind="stable")
    short, long = order[:16], order[-16:]
    losses = {}
    for average in ("batch", "dataset"):
        cfg, words = fill_from_dataset(small_cfg("objective.negatives=full", f"objective.loss_average={average}"), ds)
        width = train_window(cfg)
        per_row = mean_targets_per_row(rows.lengths, width)
        assert per_row == pytest.approx(np.mean([min(n, width) - 1 for n in rows.lengths]))
        keras.utils.set_random_seed(0)      # the same weights for both
        pre = build_pretrainer(cfg.validate(), build_encoder_for(cfg, words), per_row)

        def loss(idx):
            batch = {k: keras.ops.convert_to_tensor(v) for k, v in pad_batch(rows, idx, width).items()}
            return len(idx) * float(keras.ops.convert_to_numpy(pre.nbp(batch, encoder=pre.encoder,
                                                                        scoring=pre.scoring)))
        losses[average] = (loss(short), loss(long), loss(np.concatenate([short, long])))
        # A batch of padding rows only (a distributed replica's share of a small last batch) adds nothing.
        padding = {k: keras.ops.zeros_like(keras.ops.convert_to_tensor(v)) for k, v in pad_batch(rows, short, width).items()}
        assert float(keras.ops.convert_to_numpy(pre.nbp(padding, encoder=pre.encoder, scoring=pre.scoring))) == 0.0
    assert losses["dataset"][0] + losses["dataset"][1] == pytest.approx(losses["dataset"][2], rel=1e-5)
    # A batch of short histories: its mean scaled by its own targets over rows x the data's mean.
    for i, idx in enumerate((short, long)):
        targets = sum(min(n, width) - 1 for n in rows.lengths[idx])
        assert losses["dataset"][i] == pytest.approx(losses["batch"][i] * targets / (len(idx) * per_row), rel=1e-5)
    with pytest.raises(ConfigError, match="nbp_from=every"):
        small_cfg("objective.loss_average=dataset", "objective.nbp_from=last").validate()


def test_bag_idf_target_weight_by_hand(clean_dataset, tmp_path):
    """objective.bag_target_weight=idf: the items' smoothed idf over the training rows, and the
    bag loss as each user's idf-weighted mean -log p of their items (computed by hand from the
    profile, its item table and bias); all-ones weights give the uniform loss; a saved and
    reloaded pre-trainer (a resumed checkpoint) keeps the weights."""
    import keras

    from ptum.data.batches import Rows, item_idf, pad_batch
    from ptum.model.encoder import build_encoder_for
    from ptum.model.objectives import build_pretrainer
    from ptum.training.pretrain import fill_from_dataset

    ds = contracts.open_dataset(clean_dataset[0])
    rows = Rows.from_split(ds, "train")
    base = ["model.user_embedding=profile", "objective.bag=true", "objective.bag_dropout=0.0"]
    cfg, words = fill_from_dataset(small_cfg(*base, "objective.bag_target_weight=idf"), ds)
    idf = item_idf(rows, cfg.model.num_items)
    df = np.array([sum(i in set(rows.items[rows.offsets[r]:rows.offsets[r + 1]]) for r in range(len(rows)))
                   for i in range(cfg.model.num_items)])
    np.testing.assert_allclose(idf, np.log((1 + len(rows)) / (1 + df)) + 1, rtol=1e-6)
    with pytest.raises(ValueError, match="idf"):
        build_pretrainer(cfg.validate(), build_encoder_for(cfg, words))
    with pytest.raises(ConfigError, match="bag_target_weight"):
        small_cfg("objective.bag_target_weight=idf").validate()          # no bag objective to weigh
    keras.utils.set_random_seed(0)
    pre = build_pretrainer(cfg, build_encoder_for(cfg, words), item_idf=idf)
    # Spread the items' scores (an untrained model gives them all about -log V: any weighting agrees).
    pre.encoder.profile_bias.assign(np.random.default_rng(0).normal(0, 2, cfg.model.num_items).astype(np.float32))
    batch = {k: keras.ops.convert_to_tensor(v) for k, v in pad_batch(rows, np.arange(8), 16).items()}
    got = float(keras.ops.convert_to_numpy(pre.bag(batch, encoder=pre.encoder, training=False)))
    enc = pre.encoder
    p = keras.ops.convert_to_numpy(enc.profile(enc(batch, training=False)))
    table, bias = (keras.ops.convert_to_numpy(t) for t in enc.embedding_space(training=False))
    logits = p @ table.T + bias
    logits[:, :contracts.FIRST_ITEM_ID] = -np.inf
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    ids = keras.ops.convert_to_numpy(batch["item_ids"])
    weighted, unweighted = [], []
    for r in range(len(ids)):
        items = ids[r][(ids[r] != contracts.PAD_ID) & (ids[r] != contracts.OOV_ID)]
        weighted.append(-(idf[items] * logp[r, items]).sum() / idf[items].sum())
        unweighted.append(-logp[r, items].mean())
    assert got == pytest.approx(np.mean(weighted), rel=1e-4)
    assert abs(np.mean(weighted) - np.mean(unweighted)) > 1e-2       # the weights matter here
    # Uniform: the unweighted mean, which idf weights of 1 give too.
    uniform = build_pretrainer(fill_from_dataset(small_cfg(*base), ds)[0].validate(), enc)
    flat = float(keras.ops.convert_to_numpy(uniform.bag(batch, encoder=enc, training=False)))
    assert flat == pytest.approx(np.mean(unweighted), rel=1e-4)
    pre.bag.item_idf.assign(np.ones_like(idf))
    assert float(keras.ops.convert_to_numpy(pre.bag(batch, encoder=enc, training=False))) == pytest.approx(flat, rel=1e-5)
    # `ptum pretrain` computes them from its train rows, and its checkpoint (what a resumed run
    # loads) carries them.
    from ptum.training.pretrain import pretrain
    out = str(tmp_path / "m")
    pretrain(clean_dataset[0], out, small_cfg(*base, "objective.bag_target_weight=idf", "train.epochs=1"),
             log=lambda s: None)
    loaded = keras.saving.load_model(os.path.join(out, "checkpoints", "latest.keras"), compile=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.bag.item_idf.value), idf)
