"""The public API as a notebook uses it: one import, in-memory tables in, a trained,
evaluated, fine-tuned and exported model out; global Keras state put back afterwards."""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _logs(users=240, items=80, seed=0):
    """Events as a DataFrame: two user groups prefer two halves of the catalog (the label a
    fine-tuned model can find), with timestamps and a behavior column."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        group = u % 2
        n = int(rng.integers(8, 20))
        pool = np.arange(items // 2) + group * (items // 2)
        for j, item in enumerate(rng.choice(pool, size=n)):
            rows.append((f"u{u}", f"i{item}", 1_600_000_000 + u * 1000 + j * 60, "click"))
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "behavior"])
    labels = pd.DataFrame({"user_id": [f"u{u}" for u in range(users)],
                           "group": ["a" if u % 2 == 0 else "b" for u in range(users)]})
    return events, labels


def test_notebook_flow_through_the_public_api_only(tmp_path):
    import ptum  # the one import

    events, labels = _logs()
    data = ptum.tokenize(events, tmp_path / "data", window=3, split="window")
    assert data.manifest["counts"]["events_accepted"] == len(events)
    assert data.manifest["counts"]["users"] == 240

    policy_before = __import__("keras").mixed_precision.global_policy().name
    py_state, np_state = random.getstate(), np.random.get_state()
    model = ptum.pretrain("demo", data, tmp_path / "model",
                          overrides=["train.epochs=3", "model.embedding_dim=16", "objective.num_negatives=16"],
                          log=lambda line: None)
    assert isinstance(model, ptum.Model) and model.metadata["epochs_run"] == 3
    # Training seeded Python's and NumPy's generators; the caller's states are back.
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:2], np_state[1:2]))
    assert __import__("keras").mixed_precision.global_policy().name == policy_before

    metrics = ptum.evaluate(model, data, split="test")
    assert metrics["users"] == 240 and 0.0 < metrics["recall@10"] <= 1.0
    # The same numbers as the CLI's `ptum evaluate` on the same folders.
    r = subprocess.run([sys.executable, "-m", "ptum.cli", "-q", "evaluate", "--model", model.path,
                        "--data", data.root, "--split", "test"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=1e-9)

    users, vectors = ptum.embed_users(model, data)
    assert len(users) == 240 and vectors.shape == (240, 16) and np.isfinite(vectors).all()

    ft = ptum.finetune(model, data, labels, tmp_path / "group", label_column="group",
                       config={"epochs": 2, "head_epochs": 20}, log=lambda line: None)
    assert ft["labels"]["users_labelled"] == 240
    assert ft["valid"]["auc"] > 0.8      # the planted group is easy to find

    path = ptum.export_model(model, tmp_path / "serving", version=7)
    assert os.path.basename(path) == "7" and os.path.exists(os.path.join(path, "saved_model.pb"))


def test_configs_are_presets_and_bad_inputs_say_so(tmp_path):
    import ptum
    from ptum.config import ConfigError, presets

    assert {"demo", "beauty", "user-embeddings", "ml100k-nextitem"} <= set(presets())
    assert ptum.load_config("beauty").model.max_len == 50
    assert ptum.load_config({"model": {"embedding_dim": 8}}).model.embedding_dim == 8
    with pytest.raises(ConfigError, match="no such config file or preset"):
        ptum.load_config("beuty")
    with pytest.raises(ConfigError, match="model.num_blocks"):
        ptum.load_config("demo", ["model.num_blocks=-1"])
    with pytest.raises(TypeError, match="pyarrow.Table or a pandas.DataFrame"):
        ptum.tokenize(42, tmp_path / "d")
    with pytest.raises(ValueError, match="cannot tell the format"):
        ptum.tokenize(str(tmp_path / "events.log"), tmp_path / "d")


def test_presets_ship_with_a_non_editable_install(tmp_path):
    """A wheel built from this checkout carries the presets (package data), so an installed
    `ptum` finds `--config beauty` without the checkout."""
    import zipfile

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), root], capture_output=True, text=True)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not in this environment")
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = [f for f in os.listdir(tmp_path) if f.endswith(".whl")][0]
    names = zipfile.ZipFile(os.path.join(tmp_path, wheel)).namelist()
    assert "ptum/configs/beauty.yaml" in names and "ptum/configs/demo.yaml" in names
    assert "ptum/data/ingest/sink.py" in names and "schemas/schema.pbtxt" in names
