"""Benchmark result files are replaced whole: a benchmark that fails while writing its result
leaves the previous result as it was (the committed tables are what the README quotes)."""
import json
import os

import pytest

from benchmarks import common


def _result(value):
    return {"stack": {"name": "legacy"}, "machine": {"cores": 2, "cpu": "test"}, "command": "python bench.py",
            "created": "2026-12-07T00:00:00+00:00", "value": value}


def test_a_result_that_fails_to_serialise_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", str(tmp_path))
    common.write_result("bench", _result(0.5), ["run", "score"], [{"run": "a", "score": "0.5"}])
    before = {name: (tmp_path / name).read_text() for name in ("bench.json", "bench.md")}
    with pytest.raises(TypeError):
        common.write_result("bench", _result(object()), ["run", "score"], [{"run": "a", "score": "?"}])
    assert {name: (tmp_path / name).read_text() for name in before} == before
    assert json.loads(before["bench.json"])["value"] == 0.5
    assert sorted(os.listdir(tmp_path)) == ["bench.json", "bench.md"]     # no temporary file left


def test_a_figure_that_fails_to_render_leaves_the_previous_png(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = str(tmp_path / "curve.png")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    common.save_figure(fig, path)
    first = open(path, "rb").read()
    assert first.startswith(b"\x89PNG")
    ax.set_title(r"$\frac{1}{$")      # bad mathtext: matplotlib fails while drawing, mid-write
    with pytest.raises(ValueError):
        common.save_figure(fig, path)
    assert open(path, "rb").read() == first
    assert os.listdir(tmp_path) == ["curve.png"]
    plt.close(fig)
