"""SavedModel signatures (loaded with TensorFlow alone), saved_model_cli, batch export parity."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from ptum.data import contracts  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small text-aware model on generated logs whose catalog has one item never interacted with."""
    from ptum.config import PTUMConfig
    from ptum.data.generate import generate
    from ptum.data.ingest import plan, reference
    from ptum.training.pretrain import pretrain

    root = tmp_path_factory.mktemp("export")
    logs = str(root / "logs")
    generate(logs, users=150, items=60, seed=2, mean_events=12)
    with open(os.path.join(logs, "items.csv"), "a") as f:
        f.write("item_brand_new,kalomi0 new pro,cat0|group0\n")
    data = str(root / "data")
    reference.run(plan.TokenizeOptions(inputs=[os.path.join(logs, "events.csv")], format="csv", output=data,
                                       items_catalog=os.path.join(logs, "items.csv")))
    cfg = PTUMConfig.load(None, ["model.embedding_dim=16", "model.num_blocks=1", "model.num_heads=1",
                                 "model.max_len=10", "model.use_text=true", "train.epochs=2",
                                 "objective.num_negatives=16"])
    model = str(root / "model")
    pretrain(data, model, cfg, log=lambda s: None)
    return {"root": root, "logs": logs, "data": data, "model": model}


@pytest.fixture(scope="module")
def saved(trained):
    from ptum.serving.saved_model import export_saved_model

    return export_saved_model(trained["model"], str(trained["root"] / "serving" / "user_model"), version=7)


def test_versioned_layout_and_assets(saved, trained):
    assert saved.endswith(os.path.join("user_model", "7"))
    assert os.path.exists(os.path.join(saved, "saved_model.pb"))
    meta = json.load(open(os.path.join(saved, "assets.extra", "ptum_metadata.json")))
    assert meta["vocab_hash"] == contracts.open_dataset(trained["data"]).vocab_hash
    assert meta["user_embedding"]["readout"] == "last" and meta["catalog_only_items"] == 1
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(os.path.join(saved, "assets.extra", "tf_serving_warmup_requests"))]
    assert logs and logs[0].predict_log.request.model_spec.signature_name == "serving_default"
    from ptum.serving.saved_model import export_saved_model
    # The same model again: the version already there (versions are immutable, and it is this one).
    before = os.path.getmtime(os.path.join(saved, "saved_model.pb"))
    assert export_saved_model(trained["model"], os.path.dirname(saved), version=7) == saved
    assert os.path.getmtime(os.path.join(saved, "saved_model.pb")) == before
    # A version held by another model is refused.
    other = os.path.join(os.path.dirname(saved), "8")
    os.makedirs(os.path.join(other, "assets.extra"))
    with open(os.path.join(other, "assets.extra", "ptum_metadata.json"), "w") as f:
        json.dump({"files_sha256": {"encoder.keras": "0" * 64}, "vocab_hash": meta["vocab_hash"]}, f)
    with pytest.raises(FileExistsError, match="holds another model"):
        export_saved_model(trained["model"], os.path.dirname(saved), version=8)


def test_one_model_one_version_for_export_model_and_export_embeddings(trained, tmp_path):
    from ptum.model.saving import model_version
    from ptum.serving.export_embeddings import run
    from ptum.serving.saved_model import export_saved_model

    meta = json.load(open(os.path.join(trained["model"], "metadata.json")))
    version = model_version(meta)
    assert abs(version - time.time()) < 24 * 3600      # when the model finished training
    served = export_saved_model(trained["model"], str(tmp_path / "serving"))
    assert os.path.basename(served) == str(version)
    m = run(trained["model"], trained["data"], str(tmp_path / "emb"), batch_rows=64)
    assert m["model_version"] == str(version)          # the table names the version that serves it


FRESH = r'''
import json, sys
import numpy as np
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
sig = m.signatures
out = {"signatures": sorted(sig.keys())}
def ex(items, ts):
    f = {"user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"u"])),
         "item_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=items)),
         "timestamps": tf.train.Feature(int64_list=tf.train.Int64List(value=ts)),
         "behavior_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=[2] * len(items))),
         "length": tf.train.Feature(int64_list=tf.train.Int64List(value=[len(items)]))}
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()
e = sig["serving_default"](examples=tf.constant([ex([3, 4, 5], [1, 2, 3]), ex([7], [10])]))["user_embedding"]
out["serving_shape"] = list(e.shape)
items = tf.constant([["item_000001", "item_000002", "no_such_item"], ["item_brand_new", "", ""]])
beh = tf.constant([["click", "like", "click"], ["click", "", ""]])
ts = tf.constant([[1, 2, 3], [5, 0, 0]], tf.int64)
r = sig["embed_sequences"](item_ids=items, behaviors=beh, timestamps=ts)["user_embedding"]
out["raw_finite"] = bool(np.isfinite(r.numpy()).all())
top = sig["top_k"](item_ids=items, behaviors=beh, timestamps=ts, k=tf.constant(5))
out["top_items"] = [[x.decode() for x in row] for row in top["item_ids"].numpy()]
ie = sig["item_embeddings"]()
out["n_items"] = int(ie["item_ids"].shape[0])
out["has_new_item"] = b"item_brand_new" in ie["item_ids"].numpy().tolist()
out["space"] = ie["space"].numpy().decode()
out["bias_zero"] = bool((ie["bias"].numpy() == 0).all())
out["ptum_imported"] = "ptum" in sys.modules
print(json.dumps(out))
'''


def test_signatures_in_a_fresh_tensorflow_process(saved, trained):
    r = subprocess.run([sys.executable, "-c", FRESH, saved], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), cwd=str(trained["root"]))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["signatures"] == ["embed_sequences", "embed_tokens", "item_embeddings", "serving_default", "top_k"]
    assert out["serving_shape"] == [2, 16]
    assert out["raw_finite"] and not out["ptum_imported"]
    assert out["has_new_item"]
    assert out["space"] == "next_item_query" and out["bias_zero"]    # the query's space: top_k's table, no bias
    n_vocab = contracts.open_dataset(trained["data"]).manifest["counts"]["items"]
    assert out["n_items"] == n_vocab + 1
    # The user's own history is never recommended back.
    assert "item_000001" not in out["top_items"][0] and "item_000002" not in out["top_items"][0]
    assert all(len(row) == 5 for row in out["top_items"])


def test_saved_model_cli_show_and_run(saved):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    r = subprocess.run([cli, "show", "--dir", saved, "--all"], capture_output=True, text=True)
    assert r.returncode == 0 and "user_embedding" in r.stdout and "top_k" in r.stdout
    r = subprocess.run([cli, "run", "--dir", saved, "--tag_set", "serve", "--signature_def", "embed_tokens",
                        "--input_exprs", "item_ids=[[3,4,0]];behavior_ids=[[2,2,0]];"
                        "timestamps=[[1,5,0]];lengths=[2]"],
                        capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "user_embedding" in r.stdout


def test_batch_export_matches_serving(saved, trained, tmp_path):
    import tensorflow as tf

    from ptum.data.features import row_to_example
    from ptum.serving.export_embeddings import read_embeddings, run

    out = str(tmp_path / "emb")
    m = run(saved, trained["data"], out, batch_rows=64, tfrecord=True)
    assert m["counts"]["users"] == 150 and m["model_version"] == "7"
    # Each file says what its columns mean and which vector, model and config made them.
    import glob

    import pyarrow.parquet as pq
    schema = pq.read_schema(sorted(glob.glob(os.path.join(out, "embeddings", "*.parquet")))[0])
    assert b"newest behavior" in schema.field("as_of").metadata[b"description"]
    assert json.loads(schema.metadata[b"ptum.model_version"]) == "7"
    assert json.loads(schema.metadata[b"ptum.user_embedding"])["readout"] == "last"
    assert "model" in json.loads(schema.metadata[b"ptum.config"])
    table = read_embeddings(out)
    assert table.num_rows == 150 and set(table.column_names) >= {"user_id", "embedding", "model_version",
                                                                  "vocab_hash", "as_of"}
    rows = contracts.open_dataset(trained["data"]).read_split("test").to_pylist()
    model = tf.saved_model.load(saved)
    served = model.signatures["serving_default"](
        examples=tf.constant([row_to_example(r) for r in rows]))["user_embedding"].numpy()
    exported = {u: np.asarray(e, np.float32) for u, e in
                zip(table.column("user_id").to_pylist(), table.column("embedding").to_pylist())}
    diff = max(np.abs(exported[r["user_id"]] - served[i]).max() for i, r in enumerate(rows))
    assert diff < 1e-5, f"batch export differs from serving by {diff}"
    records = sorted(f for f in os.listdir(os.path.join(out, "embeddings")) if f.endswith(".tfrecord"))
    assert records
    spec = {"user_id": tf.io.FixedLenFeature([], tf.string),
            "embedding": tf.io.FixedLenFeature([table.column("embedding").type.list_size], tf.float32)}
    n = 0
    for raw in tf.data.TFRecordDataset([os.path.join(out, "embeddings", f) for f in records]):
        ex = tf.io.parse_single_example(raw, spec)
        assert np.abs(ex["embedding"].numpy() - exported[ex["user_id"].numpy().decode()]).max() == 0.0
        n += 1
    assert n == 150


def test_embed_users_transform_in_a_test_pipeline(saved, trained, tmp_path):
    import apache_beam as beam
    import pyarrow.parquet as pq
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from ptum.serving.export_embeddings import EMBEDDINGS_DIR, EmbedUsers

    ds = contracts.open_dataset(trained["data"])
    out = tmp_path / "emb"
    with TestPipeline() as p:
        counts = p | EmbedUsers([(f, []) for f in ds.split_files("test")], saved, str(out), 10, "7",
                                ds.vocab_hash, batch_rows=32)
        assert_that(counts | beam.Map(lambda c: (c["users"], len(c["files"]))), equal_to([(150, 5)]))
    files = sorted(os.listdir(out / EMBEDDINGS_DIR))
    assert len(files) == 5 and sum(pq.read_metadata(str(out / EMBEDDINGS_DIR / f)).num_rows for f in files) == 150


def test_export_refuses_other_vocabulary_and_counts_oov_users(saved, trained, tmp_path):
    from ptum.data.ingest import plan, reference
    from ptum.serving.export_embeddings import ExportError, run

    other_csv = tmp_path / "o.csv"
    other_csv.write_text("user_id,item_id,timestamp\nu1,x1,1\nu1,x2,2\nu2,item_000001,1\n")
    reference.run(plan.TokenizeOptions(inputs=[str(other_csv)], format="csv", output=str(tmp_path / "other")))
    with pytest.raises(ExportError, match="does not match"):
        run(saved, str(tmp_path / "other"), str(tmp_path / "e1"))
    reference.run(plan.TokenizeOptions(inputs=[str(other_csv)], format="csv", output=str(tmp_path / "frozen"),
                                       vocab_from=trained["data"]))
    m = run(saved, str(tmp_path / "frozen"), str(tmp_path / "e2"))
    assert m["counts"]["users"] == 2 and m["counts"]["users_all_oov"] == 1


def test_newest_history_of_every_user_across_shards(saved, trained, tmp_path):
    """Without --split every user is embedded once, from the test row where there is one (its
    newest behavior is the as_of), else from the train row; shards are paired by index, no
    user list passes through the driver."""
    from ptum.data.ingest import plan, reference
    from ptum.serving.export_embeddings import read_embeddings, run, same_users_files

    lines = ["user_id,item_id,timestamp"]
    newest = {}
    for u in range(40):
        n = 1 + u % 5                 # 1..5 behaviors: users with < 3 have no test row
        for j in range(n):
            lines.append(f"u{u},item_{(u * 7 + j) % 50:06d},{100 + j}")
        newest[f"u{u}"] = 100 + n - 1
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n")
    data = str(tmp_path / "d")
    reference.run(plan.TokenizeOptions(inputs=[str(tmp_path / "e.csv")], format="csv", output=data,
                                       vocab_from=trained["data"], num_shards=3))
    ds = contracts.open_dataset(data)
    pairs = same_users_files(ds, "train", "test")
    assert len(pairs) == 3 and all(len(v) == 1 and v[0].endswith(k[-len("00000-of-00003.parquet"):])
                                   for k, v in pairs.items())
    m = run(saved, data, str(tmp_path / "emb"), batch_rows=4)
    table = read_embeddings(str(tmp_path / "emb"))
    users = table.column("user_id").to_pylist()
    assert m["counts"]["users"] == 40 and sorted(users) == sorted(newest)
    test_users = set(ds.read_split("test", columns=["user_id"]).column("user_id").to_pylist())
    assert 0 < len(test_users) < 40
    for u, as_of in zip(users, table.column("as_of").to_pylist()):
        # the test row holds the whole history; a train-only user's row is all it has
        assert as_of == newest[u], u
