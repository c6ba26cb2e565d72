"""The tf.Example feature spec of sequence rows, defined once in schemas/sequence_features.json,
and Arrow columns -> serialized tf.Examples (vectorised)."""
from __future__ import annotations

import json
import os
from typing import Dict, List

import numpy as np

_SPEC_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas",
                          "sequence_features.json")


def feature_spec_json() -> Dict[str, dict]:
    try:
        from importlib import resources
        text = resources.files("schemas").joinpath("sequence_features.json").read_text()
    except (ImportError, FileNotFoundError, ModuleNotFoundError, AttributeError):
        with open(_SPEC_PATH, encoding="utf-8") as f:
            text = f.read()
    return json.loads(text)["features"]


def tf_feature_spec():
    """{name: tf.io.FixedLenFeature | tf.io.VarLenFeature} for tf.io.parse_example."""
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
    spec = {}
    for name, f in feature_spec_json().items():
        if f["kind"] == "var_len":
            spec[name] = tf.io.VarLenFeature(dtypes[f["dtype"]])
        else:
            spec[name] = tf.io.FixedLenFeature(f["shape"], dtypes[f["dtype"]])
    return spec


SEQUENCE_FEATURES = ("user_id", "item_ids", "timestamps", "behavior_ids", "length")


def _example_value_type(t):
    import pyarrow as pa

    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float32()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        return pa.binary()
    raise TypeError(f"no tf.Example feature type for Arrow type {t}")


def _as_list_array(col):
    """An Arrow column -> list<int64 | float32 | binary> (a scalar column: one value per row)."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        offsets = (np.arange(len(col) + 1, dtype=np.int32) * t.list_size if pa.types.is_fixed_size_list(t)
                   else np.asarray(col.offsets, np.int64).astype(np.int32))
        values = col.flatten() if not pa.types.is_fixed_size_list(t) else col.values[col.offset * t.list_size:
                                                                                     (col.offset + len(col)) * t.list_size]
        return pa.ListArray.from_arrays(pa.array(offsets), values.cast(_example_value_type(t.value_type)))
    return pa.ListArray.from_arrays(pa.array(np.arange(len(col) + 1, dtype=np.int32)),
                                    col.cast(_example_value_type(t)))


def arrow_to_examples(columns) -> List[bytes]:
    """Serialized tf.Examples, one per row, from Arrow columns {feature: array}: integers ->
    int64_list, floats -> float_list, strings -> bytes_list; a scalar column is a one-value
    feature. One vectorised call (tfx_bsl's Arrow -> tf.Example encoder) where tfx_bsl is
    installed, else one tf.train.Example per row."""
    import pyarrow as pa

    lists = {name: _as_list_array(col) for name, col in columns.items()}
    try:
        from tfx_bsl.coders import example_coder
    except ImportError:
        example_coder = None
    if example_coder is not None:
        return list(example_coder.RecordBatchToExamples(pa.RecordBatch.from_pydict(lists)))
    import tensorflow as tf

    def feature(values, t):
        if pa.types.is_integer(t):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        if pa.types.is_floating(t):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    n = len(next(iter(lists.values()))) if lists else 0
    py = {name: (col.to_pylist(), col.type.value_type) for name, col in lists.items()}
    return [tf.train.Example(features=tf.train.Features(feature={
        name: feature(values[i], t) for name, (values, t) in py.items()})).SerializeToString() for i in range(n)]


def sequence_examples(batch) -> List[bytes]:
    """Sequence rows (an Arrow table or record batch of the dataset's split files) -> the
    serialized tf.Examples that serving and the TFX Examples artifact read."""
    return arrow_to_examples({name: batch.column(name) for name in SEQUENCE_FEATURES})


def row_to_example(row: dict) -> bytes:
    """One sequence row (a dict as read from Parquet) -> serialized tf.Example."""
    import pyarrow as pa

    return sequence_examples(pa.table({name: [row[name]] for name in SEQUENCE_FEATURES}))[0]
