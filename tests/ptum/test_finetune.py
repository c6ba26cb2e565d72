"""Fine-tuning: both task types, both modes, label problems reported, fine-tuned model reloads."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@pytest.fixture(scope="module")
def pretrained(clean_dataset, tmp_path_factory):
    from ptum.config import PTUMConfig
    from ptum.training.pretrain import pretrain

    data, logs = clean_dataset
    out = str(tmp_path_factory.mktemp("ft") / "model")
    cfg = PTUMConfig.load(None, ["model.embedding_dim=16", "model.num_blocks=1", "model.num_heads=1",
                                 "model.max_len=20", "train.epochs=4", "objective.num_negatives=32"])
    pretrain(data, out, cfg, log=lambda s: None)
    return out, data, logs


SMALL_FT = "epochs: 20\nhead_epochs: 8\npatience: 20\nlearning_rate: 0.003\n"


def cli(*args):
    if args[0] == "finetune":
        import tempfile
        cfg = os.path.join(tempfile.mkdtemp(), "ft.yaml")
        with open(cfg, "w") as f:
            f.write(SMALL_FT)
        args = args + ("--config", cfg)
    return subprocess.run([sys.executable, "-m", "ptum.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


@pytest.mark.parametrize("task,mode,column", [("classify", "full", "gender"), ("classify", "frozen", "age_group"),
                                              ("ctr", "full", None), ("ctr", "frozen", None)])
def test_finetune_tasks_and_modes(pretrained, tmp_path, task, mode, column):
    model, data, logs = pretrained
    labels = os.path.join(logs, "users.csv" if task == "classify" else "impressions.csv")
    out = str(tmp_path / "ft")
    args = ["finetune", "--pretrained", model, "--data", data, "--labels", labels, "--task", task, "--mode", mode,
            "--output", out]
    if column:
        args += ["--label-column", column]
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    # Readable output: no warning about variables off the embedding path (pre-training's
    # scoring tables are frozen, the unused pooling layer is not built), and one progress
    # line per fine-tuning epoch with an ETA.
    assert "Gradients do not exist" not in r.stderr, r.stderr[-3000:]
    assert not [ln for ln in r.stderr.splitlines() if ln.strip()], r.stderr[-3000:]
    if mode == "full":
        assert "ETA <=" in r.stdout and "epoch   1/20" in r.stdout, r.stdout[-2000:]
    meta = json.load(open(os.path.join(out, "metadata.json")))
    m = meta["valid"]
    for k in ("auc", "accuracy", "macro_f1", "log_loss"):
        assert np.isfinite(m[k]), k
    if task == "classify" and column == "gender":
        assert meta["classes"] == ["F", "M"]
        # Labels follow the latent interests of the generated users (a bag-of-items logistic
        # regression reaches ~0.95 AUC here): the fine-tuned user model must find the signal.
        assert m["auc"] > 0.65
    if column == "age_group":
        assert len(meta["classes"]) == 4
    # The fine-tuned model reloads and still exposes the user embedding.
    import keras

    import ptum.model.heads  # noqa: F401
    import ptum.model.encoder  # noqa: F401
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ft = keras.saving.load_model(os.path.join(out, "model.keras"), compile=False)
        again = keras.saving.load_model(os.path.join(out, "model.keras"), compile=False)
    # The head comes back built with its trained weights (not left to a fresh random build).
    assert not [w for w in caught if "cannot be built" in str(w.message)]
    assert ft.out.built and len(ft.out.weights) == 2
    from ptum.data.batches import Rows, pad_batch
    from ptum.data.contracts import open_dataset
    rows = Rows.from_split(open_dataset(data), "test")
    batch = pad_batch(rows, np.arange(4), 20, time_buckets=32)
    if task == "ctr":
        batch["candidate"] = np.full(4, 3, np.int32)
    assert keras.ops.convert_to_numpy(ft.user_embedding(batch)).shape == (4, 16)
    p = keras.ops.convert_to_numpy(ft(batch))
    assert p.shape == ((4, len(meta["classes"])) if task == "classify" else (4, 1))
    np.testing.assert_allclose(p, keras.ops.convert_to_numpy(again(batch)), rtol=1e-6, atol=1e-7)


def test_label_problems_are_counted_and_fatal_ones_are_clear(pretrained, tmp_path):
    model, data, _ = pretrained
    labels = tmp_path / "labels.csv"
    lines = ["user_id,segment"]
    for u in range(0, 60):
        lines.append(f"user_{u:07d},{'a' if u % 3 else 'b'}")
    lines += ["user_0000001,b", "nobody,a", "user_0000070,", "user_0000071,a"]
    labels.write_text("\n".join(lines) + "\n")
    # user_0000001 is labelled a, then b: refused by default, naming the user.
    r = cli("finetune", "--pretrained", model, "--data", data, "--labels", str(labels), "--task", "classify",
            "--label-column", "segment", "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "disagree" in r.stderr and "user_0000001" in r.stderr, r.stderr[-2000:]
    for policy, kept in (("first", "a"),):     # the other policies: test_duplicate_label_policies
        conf = tmp_path / f"{policy}.yaml"
        conf.write_text(SMALL_FT + f"\nduplicate_labels: {policy}\n")
        r = subprocess.run([sys.executable, "-m", "ptum.cli", "finetune", "--pretrained", model, "--data", data,
                            "--labels", str(labels), "--task", "classify", "--label-column", "segment",
                            "--output", str(tmp_path / policy), "--config", str(conf)],
                           capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        assert r.returncode == 0, r.stderr[-2000:]
        rep = json.load(open(tmp_path / policy / "metadata.json"))["labels"]
        assert rep["duplicate_user_rows"] == 1 and rep["users_absent_from_dataset"] == 1
        assert rep["conflicting_label_users"] == 1 and rep["duplicate_policy"] == policy
        assert rep["missing_values"] == 1 and rep["users_labelled"] == 61
        assert rep["class_counts"]["a"] == 40 + (kept == "a")
    one = tmp_path / "one.csv"
    one.write_text("user_id,segment\nuser_0000001,a\nuser_0000002,a\n")
    r = cli("finetune", "--pretrained", model, "--data", data, "--labels", str(one), "--task", "classify",
            "--label-column", "segment", "--output", str(tmp_path / "o2"))
    assert r.returncode == 2 and "1 class" in r.stderr
    assert not os.path.exists(tmp_path / "o2" / "metadata.json")
    r = cli("finetune", "--pretrained", model, "--data", data, "--labels", str(one), "--task", "classify",
            "--label-column", "nope", "--output", str(tmp_path / "o3"))
    assert r.returncode == 2 and "no 'nope' column" in r.stderr


def test_duplicate_label_policies():
    import pyarrow as pa

    from ptum.data.batches import Rows
    from ptum.training.finetune import LabelError, join_labels

    flat = np.arange(3, 9, dtype=np.int32)
    rows = Rows(np.array(["u1", "u2", "u3"], object), np.array([0, 2, 4, 6]), flat, flat, flat.astype(np.int64))
    labels = pa.table({"user_id": ["u1", "u2", "u1", "u3", "u3", "u9"], "g": ["a", "b", "b", "a", "a", "b"]})
    with pytest.raises(LabelError, match="disagree, e.g. 'u1'"):
        join_labels(rows, labels, "g")
    for policy, u1 in (("first", "a"), ("last", "b"), ("drop", None)):
        idx, classes, y, rep = join_labels(rows, labels, "g", policy)
        got = {rows.user_ids[i]: classes[c] for i, c in zip(idx, y)}
        assert got == {k: v for k, v in {"u1": u1, "u2": "b", "u3": "a"}.items() if v is not None}, policy
        assert rep["duplicate_user_rows"] == 2 and rep["conflicting_label_users"] == 1   # u3's repeat agrees
        assert rep["users_absent_from_dataset"] == 1


def test_metrics_match_definitions():
    from ptum.training.finetune import classification_metrics

    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    m = classification_metrics(y, prob, 2)
    assert m["auc"] == pytest.approx(1.0) and m["accuracy"] == pytest.approx(0.75)
    y3 = np.array([0, 1, 2, 2])
    p3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    m3 = classification_metrics(y3, p3, 3)
    assert 0.5 < m3["auc"] <= 1.0 and m3["macro_f1"] < 1.0


def test_newest_rows_prefer_the_newer_split():
    import numpy as np

    from ptum.data.batches import Rows

    def rows(users, seqs):
        lens = [len(s) for s in seqs]
        flat = np.array([x for s in seqs for x in s], np.int32)
        return Rows(np.array(users, object), np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), flat, flat,
                    flat.astype(np.int64))

    newer = rows(["u1", "u2"], [[1, 2], [3, 4, 5]])
    older = rows(["u1", "u3", "u4"], [[1], [6, 7], [8, 9, 10]])
    r = newer.newest_with(older)
    assert list(r.user_ids) == ["u1", "u2", "u3", "u4"]
    assert [list(r.items[a:b]) for a, b in zip(r.offsets[:-1], r.offsets[1:])] == [[1, 2], [3, 4, 5], [6, 7],
                                                                                 [8, 9, 10]]


def test_full_mode_is_reproducible_in_one_process(pretrained, tmp_path):
    """Two full-mode fine-tunes with one seed give the same model (the encoder's dropout layers
    take their seeds as the encoder is loaded: the seed is set before that)."""
    import random

    from ptum.training.finetune import FinetuneConfig, run

    model, data, logs = pretrained
    cfg = FinetuneConfig(mode="full", epochs=4, head_epochs=4, patience=20, seed=7)
    outs = []
    for i in range(2):
        random.random()   # whatever drew from Python's random before must not matter
        out = run(model, data, os.path.join(logs, "users.csv"), str(tmp_path / f"ft{i}"), cfg,
                  label_column="gender", log=lambda s: None)
        outs.append(out)
    assert outs[0]["valid"] == outs[1]["valid"]
    assert [h["loss"] for h in outs[0]["history"]] == [h["loss"] for h in outs[1]["history"]]


def test_finetuning_says_when_it_stopped_early_and_which_epoch_it_kept(pretrained, tmp_path):
    from ptum.config import FinetuneConfig
    from ptum.training.finetune import run

    model, data, logs = pretrained
    lines = []
    out = run(model, data, os.path.join(logs, "users.csv"), str(tmp_path / "ft"),
              FinetuneConfig(epochs=12, head_epochs=0, patience=1, learning_rate=0.03), label_column="gender",
              log=lines.append)
    ran = len(out["history"]) if "history" in out else sum(1 for ln in lines if ln.startswith("epoch "))
    stopped = [ln for ln in lines if "stopped early" in ln]
    assert stopped == ([f"full phase stopped early after {ran} of 12 epochs: the valid log-loss did not improve "
                        "for 1 epochs (finetune.patience)"] if ran < 12 else [])
    kept = [ln for ln in lines if ln.startswith("kept the weights of the full phase's epoch ")]
    assert len(kept) == 1 and "valid log-loss" in kept[0]
