"""The tf.Example feature spec of sequence rows, defined once in schemas/sequence_features.json."""
from __future__ import annotations

import json
import os
from typing import Dict

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


def row_to_example(row: dict) -> bytes:
    """A sequence row (dict as read from Parquet) -> serialized tf.Example."""
    import tensorflow as tf

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))

    feats = {
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["user_id"].encode("utf-8")])),
        "item_ids": ints(row["item_ids"]),
        "timestamps": ints(row["timestamps"]),
        "behavior_ids": ints(row["behavior_ids"]),
        "length": ints([row["length"]]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()
