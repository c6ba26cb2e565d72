"""Arrow columns -> serialized tf.Examples in one vectorised call, equal (as protos) to one
tf.train.Example per row; the per-row fallback (no tfx_bsl) gives the same protos."""
import builtins

import numpy as np
import pyarrow as pa
import pytest

tf = pytest.importorskip("tensorflow")


def _by_hand(user, items, length, emb):
    f = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "user_id": f(bytes_list=tf.train.BytesList(value=[user.encode()])),
        "item_ids": f(int64_list=tf.train.Int64List(value=items)),
        "length": f(int64_list=tf.train.Int64List(value=[length])),
        "embedding": f(float_list=tf.train.FloatList(value=emb))}))


def _table():
    emb = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    return pa.table({
        "user_id": ["u0", "u1", "ü2", "u3"],
        "item_ids": pa.array([[3, 4], [], [5], [6, 7, 8]], pa.list_(pa.int32())),
        "length": pa.array([2, 0, 1, 3], pa.int32()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 3),
    }), emb


@pytest.mark.parametrize("vectorised", [True, False])
def test_arrow_to_examples_equals_one_example_per_row(vectorised, monkeypatch):
    from ptum.data.features import arrow_to_examples

    if not vectorised:
        real = builtins.__import__

        def no_tfx_bsl(name, *a, **kw):
            if name.startswith("tfx_bsl"):
                raise ImportError(name)
            return real(name, *a, **kw)
        monkeypatch.setattr(builtins, "__import__", no_tfx_bsl)
    table, emb = _table()
    sliced = table.slice(1, 3)     # arrays with an offset
    for t, rows in ((table, range(4)), (sliced, range(1, 4))):
        got = arrow_to_examples({name: t.column(name) for name in t.column_names})
        want = [_by_hand(table.column("user_id")[i].as_py(), table.column("item_ids")[i].as_py(),
                         table.column("length")[i].as_py(), emb[i].tolist()) for i in rows]
        assert [tf.train.Example.FromString(g) for g in got] == want


def test_sequence_examples_parse_with_the_serving_feature_spec(clean_dataset):
    from ptum.data import contracts
    from ptum.data.features import row_to_example, sequence_examples, tf_feature_spec

    data, _ = clean_dataset
    batch = contracts.open_dataset(data).read_split("test").to_batches(64)[0]
    examples = sequence_examples(batch)
    assert len(examples) == batch.num_rows
    parsed = tf.io.parse_example(tf.constant(examples), tf_feature_spec())
    rows = batch.to_pylist()
    assert parsed["length"].numpy().reshape(-1).tolist() == [r["length"] for r in rows]
    assert tf.sparse.to_dense(parsed["item_ids"]).numpy()[0][:rows[0]["length"]].tolist() == rows[0]["item_ids"]
    assert tf.train.Example.FromString(row_to_example(rows[5])) == tf.train.Example.FromString(examples[5])
