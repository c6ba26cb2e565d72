"""The TFX pipeline with a generative model config, end to end (LocalDagRunner, MLMD in SQLite):
ingest -> validate -> IdModelTrainer -> SemanticIdsGen (content + that model's item embeddings)
-> GenerativeTrainer -> evaluate/bless -> push, on a tiny generated span with its item catalog;
run again, everything is cached."""
import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
pytest.importorskip("tfx")

MODEL = ["model.architecture=generative", "model.embedding_dim=16", "model.num_blocks=1", "model.num_heads=1",
         "model.max_len=12", "generative.decoder_blocks=1", "generative.beam_size=10", "train.epochs=3",
         "train.batch_size=32", "train.learning_rate=0.005"]

# The id model whose item embeddings join the catalog's content vectors.
ID_MODEL = {"id_model": "demo", "id_model_overrides": ["model.embedding_dim=16", "model.max_len=12", "train.epochs=2",
                                                       "train.batch_size=32"]}


def _base(root):
    return dict(pipeline_root=str(root / "pipeline"), input_pattern=str(root / "logs" / "span-{SPAN}" / "events.csv"),
                serving_dir=str(root / "serving" / "gen"), items_catalog=str(root / "logs" / "span-1" / "items.csv"),
                model_overrides=list(MODEL), semantic_ids={"levels": 2, "codes": 4, "dim": 8, **ID_MODEL})


@pytest.fixture(scope="module")
def generative_run(tmp_path_factory):
    from pipelines.tfx_pipeline import PipelineConfig, run_local
    from ptum.data.generate import generate

    root = tmp_path_factory.mktemp("tfx-gen")
    generate(str(root / "logs" / "span-1"), users=120, items=40, seed=1, mean_events=10)
    cfg = PipelineConfig(**_base(root))
    cfg.span = 1
    return {"first": run_local(cfg), "again": run_local(cfg)}


def test_the_pipeline_learns_semantic_ids_trains_evaluates_and_pushes_the_generative_model(generative_run):
    from ptum.model.saving import GENERATIVE_MODEL

    import pyarrow.parquet as pq

    run = generative_run["first"]
    # (this_run names component types: the IdModelTrainer is the stock Trainer, the only one here)
    assert {"Trainer", "SemanticIdsGen", "GenerativeTrainer", "NextItemEvaluator",
            "VersionedPusher"} <= set(run["this_run"]["ran"])
    assert "EmbeddingExport" not in run["this_run"]["ran"]      # no user embeddings to export
    sid = run["semantic_ids"]
    assert sid["items_coded"] == 40 and os.path.exists(os.path.join(sid["path"], "codes.parquet"))
    # The codes were learned from the catalog's content joined with the id model trained in this run.
    sources = set(pq.read_table(os.path.join(sid["path"], "codes.parquet"), columns=["source"]).column(0).to_pylist())
    assert sources == {"content+collaborative"}
    manifest = json.load(open(os.path.join(sid["path"], "manifest.json")))
    id_model = manifest["parameters"]["model"]
    assert "IdModelTrainer" in id_model and json.load(open(os.path.join(id_model, "metadata.json")))["epochs_run"] == 2
    metrics = json.load(open(os.path.join(run["evaluation"]["uri"], "metrics.json")))
    meta = json.load(open(os.path.join(metrics["candidate"]["model"], "metadata.json")))
    # The trainer decoded the codes SemanticIdsGen wrote for this run's dataset.
    assert meta["model"] == GENERATIVE_MODEL and meta["item_codes"]["semantic_ids"] == sid["path"]
    assert meta["item_codes"]["items_coded"] == 40
    assert metrics["blessed"] and metrics["candidate"]["beam_size"] == 10 and "recall@10" in metrics["candidate"]
    pushed = run["pushed_model"]
    assert pushed["pushed"] == 1
    check = ("import sys, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
             "print(sorted(m.signatures))")
    r = subprocess.run([sys.executable, "-c", check, pushed["pushed_destination"]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "top_k" in r.stdout and "serving_default" in r.stdout


def test_a_second_run_of_the_span_is_cached(generative_run):
    again = generative_run["again"]["this_run"]
    assert {"Trainer", "SemanticIdsGen", "GenerativeTrainer"} <= set(again["cached"])
    assert not set(again["ran"]) & {"Trainer", "SemanticIdsGen", "GenerativeTrainer"}
    # Evaluated again against itself (now the blessed model): the same version is served.
    run = generative_run["again"]
    assert run["pushed_model"]["already_pushed"] == 1
    assert run["pushed_model"]["pushed_version"] == generative_run["first"]["pushed_model"]["pushed_version"]


def test_what_a_generative_pipeline_cannot_do_is_refused_when_it_is_built(tmp_path):
    from pipelines.tfx_pipeline import PipelineConfig, create_pipeline

    (tmp_path / "logs" / "span-1").mkdir(parents=True)
    (tmp_path / "logs" / "span-1" / "events.csv").write_text("user_id,item_id,timestamp\n")
    (tmp_path / "users.csv").write_text("user_id,gender\nu,F\n")
    base = _base(tmp_path)
    task = {"name": "g", "labels": str(tmp_path / "users.csv"), "label_column": "gender"}
    for change, msg in (({"finetune_tasks": [task]}, "no user encoder"),
                        ({"model_overrides": MODEL + ["generative.semantic_ids=/x"]}, "learns the Semantic"),
                        ({"semantic_ids": {"levelz": 2}}, "unknown key"),
                        ({"semantic_ids": {"collaborative_weight": 2.0}}, "set semantic_ids.id_model"),
                        ({"semantic_ids": {"id_model": "demo", "id_model_overrides": ["model.architecture=generative",
                                                                                        "generative.codes=item_id"]}},
                         "not a generative one"),
                        ({"semantic_ids": {"id_model": "demo", "id_model_overrides": "train.epochs=2"}},
                         "must be a list"),
                        ({"model_overrides": MODEL + ["generative.codes=item_id"]}, "generative.codes is 'item_id'"),
                        ({"model_overrides": ["model.embedding_dim=16"]}, "does not train a generative")):
        with pytest.raises(ValueError, match=msg):
            create_pipeline(PipelineConfig(**{**base, **change}))
