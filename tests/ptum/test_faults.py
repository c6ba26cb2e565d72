"""A failed, refused or killed run leaves the previous output as it was; outputs of another
kind are refused before anything is touched; one digest covers what decides a model's
behaviour (docs/RELIABILITY.md lists each guarantee and its test)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from ptum.config import PTUMConfig  # noqa: E402
from ptum.data import contracts  # noqa: E402

SMALL = ["model.embedding_dim=8", "model.num_blocks=1", "model.num_heads=1", "model.max_len=12",
         "train.batch_size=64", "objective.num_negatives=8", "train.epochs=1"]


def cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "ptum.cli", *args], capture_output=True, text=True, env=env)


def _events(path, users=60, items=25, seed=0):
    import random
    rnd = random.Random(seed)
    lines = ["user_id,item_id,timestamp"]
    for u in range(users):
        lines += [f"u{u},i{rnd.randrange(items)},{1000 + 10 * k}" for k in range(5 + u % 7)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _snapshot(folder):
    """{relative path: bytes} of a folder (the lock file aside)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            if f != contracts.LOCK_FILE:
                full = os.path.join(dirpath, f)
                out[os.path.relpath(full, folder)] = open(full, "rb").read()
    return out


def _model_files(folder):
    """The finished model's files (what checkpoints and TensorBoard logs of a new run leave alone)."""
    return {k: v for k, v in _snapshot(folder).items() if not k.startswith(("checkpoints", "tensorboard"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from ptum.data.ingest import plan, reference
    from ptum.training.pretrain import pretrain

    root = tmp_path_factory.mktemp("faults")
    a = str(root / "data_a")
    reference.run(plan.TokenizeOptions(inputs=[_events(root / "a.csv")], format="csv", output=a))
    b = str(root / "data_b")
    reference.run(plan.TokenizeOptions(inputs=[_events(root / "b.csv", items=31, seed=1)], format="csv", output=b))
    model = str(root / "model_a")
    pretrain(a, model, PTUMConfig.load(None, SMALL), log=lambda s: None)
    return {"root": root, "a": a, "b": b, "model": model}


def test_a_refused_pretrain_leaves_the_model(world, tmp_path):
    from ptum.model.saving import load_model_dir

    model = str(tmp_path / "m")
    shutil.copytree(world["model"], model)
    before = _snapshot(model)
    # Another dataset over a model with checkpoints: refused, with nothing touched.
    r = cli("pretrain", "--data", world["b"], "--output", model, *[x for s in SMALL for x in ("--set", s)])
    assert r.returncode == 2 and "checkpoint was trained on vocabulary" in r.stderr
    assert _snapshot(model) == before
    load_model_dir(model)
    # Outputs of another kind (in process: the CLI turns these errors into the same one line).
    from ptum.data.ingest import formats, plan, reference
    from ptum.training.pretrain import TrainingError, pretrain
    with pytest.raises(TrainingError, match="holds a sequence dataset"):
        pretrain(world["a"], world["b"], PTUMConfig.load(None, SMALL), log=lambda s: None)
    tok = plan.TokenizeOptions(inputs=[str(world["root"] / "a.csv")], format="csv", output=model)
    with pytest.raises(formats.InputError, match="holds a pre-trained model"):
        reference.run(tok)
    assert _snapshot(model) == before
    # A folder holding other files is not replaced.
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(formats.InputError, match="notes.txt"):
        reference.run(plan.TokenizeOptions(inputs=tok.inputs, format="csv", output=str(other)))
    assert (other / "notes.txt").read_text() == "mine"


def test_a_failed_or_killed_pretrain_leaves_the_model(world, tmp_path):
    from ptum.model.saving import load_model_dir
    from ptum.training.pretrain import TrainingError, pretrain

    model = str(tmp_path / "m")
    shutil.copytree(world["model"], model)
    shutil.rmtree(os.path.join(model, "checkpoints"))
    before = _model_files(model)
    with pytest.raises(TrainingError, match="loss is"):
        pretrain(world["a"], model, PTUMConfig.load(None, SMALL + ["train.learning_rate=1e30", "train.clipnorm=0",
                                                                   "train.epochs=3"]), log=lambda s: None)
    assert _model_files(model) == before
    load_model_dir(model)
    # Killed after its first checkpoint: the finished model is still the old one, whole.
    args = ["pretrain", "--data", world["a"], "--output", model, "--no-resume",
            *[x for s in SMALL + ["train.epochs=200", "train.patience=200"] for x in ("--set", s)]]
    proc = subprocess.Popen([sys.executable, "-m", "ptum.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    state = os.path.join(model, "checkpoints", "state.json")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.load(open(state)).get("epoch", 0) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _model_files(model) == before
    load_model_dir(model)


def test_pretrain_refuses_a_dataset_replaced_under_it(world, tmp_path):
    from ptum.data.ingest import plan, reference
    from ptum.training.pretrain import TrainingError, pretrain

    data = str(tmp_path / "data")
    shutil.copytree(world["a"], data)
    out = str(tmp_path / "m")

    def log(line):   # called at the end of each epoch: another tokenize replaces the dataset
        if line.startswith("epoch") and not os.path.exists(out + ".done"):
            open(out + ".done", "w").close()
            reference.run(plan.TokenizeOptions(inputs=[str(world["root"] / "b.csv")], format="csv", output=data))
    with pytest.raises(TrainingError, match="replaced while the model trained"):
        pretrain(data, out, PTUMConfig.load(None, SMALL + ["train.epochs=2"]), log=log)
    assert not os.path.exists(os.path.join(out, "metadata.json"))


def test_a_changed_model_file_is_refused(world, tmp_path):
    from ptum.model.saving import ModelError, load_model_dir

    model = str(tmp_path / "m")
    shutil.copytree(world["model"], model)
    shutil.copy(os.path.join(world["b"], "vocab", contracts.ITEMS_VOCAB),
                os.path.join(model, "vocab", contracts.ITEMS_VOCAB))
    with pytest.raises(ModelError, match="vocab/items.parquet changed after training"):
        load_model_dir(model)
    from ptum.serving.saved_model import export_saved_model
    with pytest.raises(ModelError, match="changed after training"):
        export_saved_model(model, str(tmp_path / "serving"))
    assert not os.path.exists(tmp_path / "serving")


def test_export_embeddings_failure_leaves_the_table(world, tmp_path):
    from ptum.serving.export_embeddings import ExportError, read_embeddings, run

    out = str(tmp_path / "emb")
    m = run(world["model"], world["a"], out, batch_rows=16)
    assert m["counts"]["users"] == contracts.open_dataset(world["a"]).manifest["counts"]["users"]
    before = _snapshot(out)
    table = read_embeddings(out)
    # The dataset loses a shard: the export fails naming it; the previous table is untouched.
    broken = str(tmp_path / "broken")
    shutil.copytree(world["a"], broken)
    os.remove(contracts.open_dataset(broken).split_files("test")[0])
    with pytest.raises(contracts.DatasetError, match="missing"):
        run(world["model"], broken, out)
    assert _snapshot(out) == before and read_embeddings(out).equals(table)
    # Failing inside the job (a worker cannot write): the same.
    import ptum.serving.export_embeddings as ee
    real = ee.sink.write_parquet

    def failing(t, path):
        raise IOError("simulated storage failure")
    ee.sink.write_parquet = failing
    try:
        with pytest.raises(Exception, match="simulated storage failure"):
            run(world["model"], world["a"], out)
    finally:
        ee.sink.write_parquet = real
    assert _snapshot(out) == before
    # Outputs that are the dataset, the model, or another kind of output: refused, untouched.
    ds_before = _snapshot(world["a"])
    for target, needle in ((world["a"], "holds a sequence dataset"), (world["model"], "holds a pre-trained model")):
        with pytest.raises(ExportError, match=needle):
            run(world["model"], world["a"], target)
    assert _snapshot(world["a"]) == ds_before
    for digest in ("", "abc"):
        with pytest.raises(ExportError, match="not a sha256 digest"):
            run(world["model"], world["a"], out, expected_sha256=digest)
    assert _snapshot(out) == before


def test_one_digest_covers_the_metadata(world, tmp_path):
    from ptum.serving.export_embeddings import ExportError, run
    from ptum.serving.saved_model import UntrustedModel, export_saved_model, read_export_metadata, verify_saved_model

    saved = export_saved_model(world["model"], str(tmp_path / "serving"), version=7)
    digest = read_export_metadata(saved)["saved_model_sha256"]
    verify_saved_model(saved, digest)
    # Point the SavedModel's metadata at dataset B's vocabulary: refused, even with the right
    # trusted digest in hand.
    path = os.path.join(saved, "assets.extra", "ptum_metadata.json")
    meta = json.load(open(path))
    meta["vocab_hash"] = contracts.open_dataset(world["b"]).vocab_hash
    json.dump(meta, open(path, "w"))
    with pytest.raises(UntrustedModel, match="do not match"):
        verify_saved_model(saved, digest)
    with pytest.raises(ExportError, match="do not match"):
        run(saved, world["b"], str(tmp_path / "emb"), expected_sha256=digest)


def test_a_failed_finetune_leaves_the_previous_output(world, tmp_path):
    from ptum.training.finetune import FinetuneConfig, LabelError, run

    labels = tmp_path / "labels.csv"
    labels.write_text("user_id,segment\n" + "".join(f"u{u},{'a' if u % 2 else 'b'}\n" for u in range(60)))
    out = str(tmp_path / "ft")
    cfg = FinetuneConfig(mode="frozen", head_epochs=3, epochs=0)
    run(world["model"], world["a"], str(labels), out, cfg, label_column="segment", log=lambda s: None)
    before = _snapshot(out)
    one = tmp_path / "one.csv"
    one.write_text("user_id,segment\nu1,a\nu2,a\n")
    with pytest.raises(LabelError, match="1 class"):
        run(world["model"], world["a"], str(one), out, cfg, label_column="segment", log=lambda s: None)
    assert _snapshot(out) == before
    # Another kind of output is refused, and this one is not taken for a model or a dataset.
    with pytest.raises(LabelError, match="holds a pre-trained model"):
        run(world["model"], world["a"], str(labels), world["model"], cfg, label_column="segment", log=lambda s: None)
    from ptum.training.pretrain import TrainingError, pretrain
    with pytest.raises(TrainingError, match="holds a fine-tuned model"):
        pretrain(world["a"], out, PTUMConfig.load(None, SMALL), log=lambda s: None)
    assert _snapshot(out) == before
