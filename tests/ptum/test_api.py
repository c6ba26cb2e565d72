"""The public API's configs and packaging (the notebook flow itself runs as the README's
example in tests/test_docs.py)."""
import os
import subprocess
import sys

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


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
