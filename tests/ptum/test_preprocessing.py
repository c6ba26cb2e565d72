"""One windowing / padding / time-bucket definition: the keras.ops layer the SavedModel runs
(ptum.model.layers.SequencePreprocessing) gives what training's numpy input pipeline
(ptum.data.batches.pad_batch) gives, on the same rows."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _rows(lengths, seed):
    from ptum.data.batches import Rows

    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    # Timestamps mostly rising with gaps across many scales, some going back in time.
    gaps = (rng.integers(0, 2, n) * rng.integers(0, 2 ** rng.integers(0, 40, n), dtype=np.int64)) - \
        rng.integers(0, 2, n) * (rng.random(n) < 0.1) * 5
    return Rows(user_ids=np.array([f"u{i}" for i in range(len(lengths))], dtype=object),
                offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                items=rng.integers(3, 1000, n).astype(np.int32), behaviors=rng.integers(0, 5, n).astype(np.int32),
                timestamps=(1_700_000_000 + np.cumsum(gaps)).astype(np.int64))


def _right_padded(rows, cut=None):
    """Dense [B, T] right-padded arrays (T = the longest row; 0 when all are empty)."""
    lens = rows.lengths if cut is None else cut
    t = int(rows.lengths.max()) if len(rows) else 0
    out = {k: np.zeros((len(rows), t), np.int64) for k in ("items", "behaviors", "timestamps")}
    for i in range(len(rows)):
        s, e = rows.offsets[i], rows.offsets[i + 1]
        for k in out:
            out[k][i, : e - s] = getattr(rows, k)[s:e]
    return out["items"], out["behaviors"], out["timestamps"], np.maximum(np.asarray(lens, np.int64), 0)


@pytest.mark.parametrize("width,buckets,seed", [(50, 32, 0), (8, 32, 1), (16, 5, 2), (3, 63, 3), (50, 0, 4)])
def test_layer_equals_the_training_input_pipeline(width, buckets, seed):
    from keras import ops

    from ptum.data.batches import pad_batch
    from ptum.model.layers import SequencePreprocessing

    lengths = np.array([0, 1, 2, width - 1, width, width + 1, 3 * width, 7, 0, 5])
    rows = _rows(lengths, seed)
    idx = np.arange(len(rows))
    layer = SequencePreprocessing(width, buckets)
    for cut in (None, np.maximum(rows.lengths - 1, 0)):   # whole rows, and rows less their newest behavior
        want = pad_batch(rows, idx, width, ends=cut, time_buckets=buckets)
        got = {k: ops.convert_to_numpy(v) for k, v in layer(*_right_padded(rows, cut)).items()}
        np.testing.assert_array_equal(got["item_ids"], want["item_ids"])
        np.testing.assert_array_equal(got["behavior_ids"], want["behavior_ids"])
        if buckets:   # without time buckets the encoder has no time embedding to read them
            np.testing.assert_array_equal(got["time_buckets"], want["time_buckets"])
        assert all(v.dtype == np.int32 and v.shape == (len(rows), width) for v in got.values())


def test_layer_takes_rows_with_no_columns_and_serializes():
    import keras
    from keras import ops

    from ptum.model.layers import SequencePreprocessing

    layer = SequencePreprocessing(4, 8, name="pre")
    empty = np.zeros((2, 0), np.int64)
    out = layer(empty, empty, empty, np.zeros(2, np.int64))
    assert ops.convert_to_numpy(out["item_ids"]).tolist() == [[0] * 4] * 2
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert (again.width, again.time_buckets) == (4, 8)


def test_layer_equals_the_training_input_pipeline_under_jax():
    """The same check on the JAX backend (a fresh process: Keras picks its backend once), with
    64-bit integers on: JAX truncates int64 timestamps to int32 otherwise."""
    import subprocess
    import sys

    pytest.importorskip("jax")
    code = ("import numpy as np, tests.ptum.test_preprocessing as t\n"
            "for width, buckets, seed in [(50, 32, 0), (8, 32, 1), (3, 63, 3)]:\n"
            "    t.test_layer_equals_the_training_input_pipeline(width, buckets, seed)\n"
            "t.test_layer_takes_rows_with_no_columns_and_serializes()\n"
            "import keras; assert keras.backend.backend() == 'jax'\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
