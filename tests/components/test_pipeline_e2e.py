"""The TFX pipeline end to end with LocalDagRunner and MLMD in SQLite, on tiny generated spans.

One module-scoped fixture runs the scenario once; the tests read its artifacts:
  run 1  span 1                        -> trained, blessed, pushed, embeddings exported
  run 2  span 1 again                  -> every component hits the cache
  run 3  span 1, a much weaker model   -> evaluated against the blessed model, not blessed, nothing pushed
  run 4  span 2 (new logs)             -> ingests and trains again
  run 5  span 3, 12% malformed rows, read in a window of 3 spans (4% on average)
                                       -> stopped by the newest span's own dead-letter rate, nothing pushed
  run 6  span 4, items collapsed       -> stopped by drift against span 2 (the last validated span)
  run 7  span 5, user and item columns swapped
                                       -> stopped by the id-column checks, nothing pushed
  run 8  span 6, clean, window of 3    -> spans 4 and 5 (stopped) left out of the window; passes
                                          validation and trains again
Every run also fine-tunes a gender classifier (a second Trainer) on the pre-trained model.
"""
import json
import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
pytest.importorskip("tfx")


def _node_executions(metadata_path):
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    conn = metadata_store_pb2.ConnectionConfig()
    conn.sqlite.filename_uri = metadata_path
    store = mlmd.MetadataStore(conn)
    out = {}
    for ctx in store.get_contexts_by_type("node"):
        node = ctx.name.split(".", 1)[-1]
        out[node] = [metadata_store_pb2.Execution.State.Name(e.last_known_state)
                     for e in sorted(store.get_executions_by_context(ctx.id), key=lambda e: e.id)]
    return out


def _edited_span(root, source: int, span: int, edit) -> None:
    """logs/span-<span>/events.csv: span <source>'s events, each row changed by `edit` in place."""
    import csv

    (root / "logs" / f"span-{span}").mkdir()
    with open(root / "logs" / f"span-{source}" / "events.csv", newline="") as src, \
            open(root / "logs" / f"span-{span}" / "events.csv", "w", newline="") as dst:
        rows = csv.DictReader(src)
        w = csv.DictWriter(dst, fieldnames=rows.fieldnames)
        w.writeheader()
        for r in rows:
            edit(r)
            w.writerow(r)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    from pipelines.tfx_pipeline import PipelineConfig, run_local, summarize
    from ptum.data.generate import generate

    root = tmp_path_factory.mktemp("tfx")
    for span, seed, bad in ((1, 1, 0.0), (2, 2, 0.0), (3, 3, 0.12), (6, 6, 0.0)):
        generate(str(root / "logs" / f"span-{span}"), users=120, items=50, seed=seed, mean_events=10,
                 malformed_rate=bad)
    base = dict(pipeline_root=str(root / "pipeline"), input_pattern=str(root / "logs" / "span-{SPAN}" / "events.csv"),
                serving_dir=str(root / "serving" / "user_model"), model_config="",
                items_catalog=str(root / "logs" / "span-1" / "items.csv"),
                model_overrides=["model.embedding_dim=16", "model.num_blocks=1", "model.num_heads=1",
                                 "model.max_len=16", "train.epochs=4", "objective.num_negatives=16"],
                finetune_tasks=[{"name": "gender", "task": "classify", "label_column": "gender",
                                 "labels": str(root / "logs" / "span-1" / "users.csv"),
                                 "config": {"mode": "frozen", "epochs": 3, "patience": 2}}],
                embedding_probe={"labels": str(root / "logs" / "span-1" / "users.csv"), "label_column": "gender",
                                 "min_auc": 0.0})
    cfg = PipelineConfig(**base)
    meta = cfg.metadata_path or os.path.join(cfg.pipeline_root, "metadata.sqlite")
    result = {"root": root, "metadata": meta}

    cfg.span = 1
    result["run1"] = run_local(cfg)
    result["execs1"] = _node_executions(meta)
    result["run2"] = run_local(cfg)
    result["execs2"] = _node_executions(meta)
    weak = PipelineConfig(**{**base, "model_overrides": base["model_overrides"] + [
        "train.epochs=1", "train.learning_rate=1e-6"]})
    weak.span = 1
    result["run3"] = run_local(weak)
    result["execs3"] = _node_executions(meta)
    cfg.span = 2
    result["run4"] = run_local(cfg)
    result["execs4"] = _node_executions(meta)
    cfg.span, cfg.span_window = 3, 3
    with pytest.raises(RuntimeError) as err:
        run_local(cfg)
    cfg.span_window = 1
    result["versions5"] = sorted(os.listdir(os.path.dirname(result["run1"]["pushed_model"]["pushed_destination"])))
    result["run5_error"] = str(err.value)
    result["run5"] = summarize(cfg)
    result["execs5"] = _node_executions(meta)
    # Span 4: span 2's events with every item folded onto 5 items (a popularity collapse).
    _edited_span(root, 2, 4, lambda r: r.update(item_id=f"item_{int(r['item_id'].split('_')[1]) % 5:06d}"))
    cfg.span = 4
    with pytest.raises(RuntimeError) as err:
        run_local(cfg)
    result["run6_error"] = str(err.value)
    result["execs6"] = _node_executions(meta)
    # Span 5: span 2's events with the user and item columns swapped (values, not header).
    _edited_span(root, 2, 5, lambda r: r.update(user_id=r["item_id"], item_id=r["user_id"]))
    cfg.span = 5
    with pytest.raises(RuntimeError) as err:
        run_local(cfg)
    result["run7_error"] = str(err.value)
    result["execs7"] = _node_executions(meta)
    cfg.span, cfg.span_window = 6, 3      # spans 4 and 5 were stopped: left out of the window
    result["run8"] = run_local(cfg)
    result["execs8"] = _node_executions(meta)
    return result


def test_first_run_pushes_a_servable_model_and_exports_embeddings(scenario):
    run = scenario["run1"]
    assert run["blessing"]["blessed"] == 1 and run["pushed_model"]["pushed"] == 1
    # The run's summary holds the counts as JSON objects, not as strings of JSON.
    assert run["dataset"]["counts"]["users"] == 120 and isinstance(run["dataset"]["span_checks"], dict)
    dest = run["pushed_model"]["pushed_destination"]
    assert os.path.basename(dest).isdigit() and os.path.exists(os.path.join(dest, "saved_model.pb"))
    import tensorflow as tf
    m = tf.saved_model.load(dest)
    assert "serving_default" in m.signatures
    emb = run["embeddings"]
    assert emb["exported"] == 1 and emb["users"] == 120
    assert emb["model_version"] == str(run["pushed_model"]["pushed_version"])
    manifest = json.load(open(os.path.join(emb["uri"], "manifest.json")))
    assert manifest["counts"]["users"] == 120
    # One version: the directory's, in the SavedModel's metadata, the table and the manifest.
    meta = json.load(open(os.path.join(dest, "assets.extra", "ptum_metadata.json")))
    assert str(meta["version"]) == os.path.basename(dest) == manifest["model_version"]
    # ... and the model's own version (when training finished), as `ptum export-model` gives it.
    from ptum.model.saving import model_version
    assert meta["version"] == model_version(meta)
    # The export verified the model against the digest MLMD recorded at push.
    assert manifest["model_verified"] == "expected digest"
    assert manifest["saved_model_sha256"] == run["pushed_model"]["saved_model_sha256"]
    report = json.load(open(os.path.join(run["validation_report"]["uri"], "validation_report.json")))
    assert report["passed"] is True
    # The evaluator probed the user embeddings for gender (labels of span 1's users).
    metrics = json.load(open(os.path.join(run["evaluation"]["uri"], "metrics.json")))
    probe = metrics["embedding_probe"]
    assert probe["labelled_users"] == 120 and 0.0 <= probe["auc"] <= 1.0 and "tfidf_svd16_auc" in probe
    assert metrics["thresholds"]["min_probe_auc"] == 0.0
    # Checkpoints and TensorBoard logs in the Trainer's ModelRun, only the model in its Model.
    assert os.path.exists(os.path.join(run["trainer_run"]["uri"], "checkpoints", "state.json"))
    model_dir = os.path.join(run["blessing"]["current_model"], "Format-Serving", "ptum_model")
    assert os.path.exists(os.path.join(model_dir, "metadata.json"))
    assert not os.path.exists(os.path.join(model_dir, "checkpoints"))
    # The Trainer opened the dataset the ingestion recorded on the Examples (handed to run_fn by
    # components.dataset_trainer), not a copy found next to the Examples files.
    trained_on = json.load(open(os.path.join(model_dir, "metadata.json")))["training_data"]["path"]
    assert trained_on == os.path.join(run["dataset"]["uri"], "ptum")


def test_mlmd_records_every_execution(scenario):
    execs = scenario["execs1"]
    for node in ("SequenceIngestion", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "ValidationGate",
                 "Trainer", "Finetune_gender", "NextItemEvaluator", "VersionedPusher", "EmbeddingExport"):
        assert execs.get(node) == ["COMPLETE"], (node, execs.get(node))


def test_finetune_trainer_fits_the_downstream_task(scenario):
    ft = scenario["run1"]["finetune"]["gender"]
    m = ft["metrics"]
    assert m and 0.0 <= m["auc"] <= 1.0 and m["n"] > 0
    meta = json.load(open(os.path.join(ft["uri"], "Format-Serving", "finetuned", "metadata.json")))
    assert meta["task"] == "classify" and sorted(meta["classes"]) == ["F", "M"]


def test_first_span_builds_its_vocabulary_and_trains_from_scratch(scenario):
    ds = scenario["run1"]["dataset"]
    assert ds["vocab_reused"] == 0 and "no blessed model" in ds["vocab_source"]
    report = json.load(open(os.path.join(scenario["run1"]["validation_report"]["uri"], "validation_report.json")))
    assert report["drift"]["checked"] is False


def test_same_span_hits_the_cache(scenario):
    execs = scenario["execs2"]
    for node in ("SequenceIngestion", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "ValidationGate",
                 "Trainer"):
        assert execs[node][-1] == "CACHED", (node, execs[node])
    # The evaluator runs again (its baseline is now the blessed model), re-blesses the same
    # model, and the pusher serves it without a second version.
    run = scenario["run2"]
    # The run says which components reused cached results (and the first run: none).
    assert {"SequenceIngestion", "Trainer"} <= set(run["this_run"]["cached"])
    assert "Trainer" in scenario["run1"]["this_run"]["ran"] and not scenario["run1"]["this_run"]["cached"]
    assert run["pushed_model"]["already_pushed"] == 1
    assert run["pushed_model"]["pushed_version"] == scenario["run1"]["pushed_model"]["pushed_version"]


def test_worse_model_is_not_blessed_and_not_pushed(scenario):
    execs = scenario["execs3"]
    assert execs["SequenceIngestion"][-1] == "CACHED" and execs["Trainer"][-1] == "COMPLETE"
    run = scenario["run3"]
    assert run["blessing"]["blessed"] == 0 and run["pushed_model"]["pushed"] == 0
    ev = json.load(open(os.path.join(run["evaluation"]["uri"], "metrics.json")))
    assert "baseline" in ev and ev["reasons"] and "embedding_stability" in ev
    serving = os.path.dirname(scenario["run1"]["pushed_model"]["pushed_destination"])
    sources = [open(os.path.join(serving, v, "assets.extra", "ptum_pushed_from.txt")).read()
               for v in os.listdir(serving) if v.isdigit()]
    assert run["blessing"]["current_model"] not in sources


def test_new_span_trains_again(scenario):
    execs = scenario["execs4"]
    assert execs["SequenceIngestion"][-1] == "COMPLETE" and execs["Trainer"][-1] == "COMPLETE"
    assert scenario["run4"]["evaluation"]["uri"] != scenario["run3"]["evaluation"]["uri"]


def test_new_span_reuses_the_vocabulary_and_warm_starts(scenario):
    run1, run4 = scenario["run1"], scenario["run4"]
    ds = run4["dataset"]
    assert ds["vocab_reused"] == 1 and ds["vocab_hash"] == run1["dataset"]["vocab_hash"], ds
    blessed_model = run1["blessing"]["current_model"]
    assert blessed_model in ds["vocab_source"]
    model_dir = os.path.join(run4["blessing"]["current_model"], "Format-Serving", "ptum_model")
    warm = json.load(open(os.path.join(model_dir, "metadata.json")))["warm_start"]
    assert warm["used"] is True and warm["from"].startswith(blessed_model), warm
    report = json.load(open(os.path.join(run4["validation_report"]["uri"], "validation_report.json")))
    assert report["drift"]["checked"] is True and report["drift"]["against_span"] == 1
    assert set(report["drift"]["features"]) == {"item_ids", "behavior_ids", "length"}
    assert all(v["jensen_shannon_divergence"] <= 0.3 for v in report["drift"]["features"].values())


def test_drifted_span_is_stopped_against_the_last_validated_span(scenario):
    err = scenario["run6_error"]
    assert "data validation failed" in err and "drift" in err
    report = json.load(open(err.split("report: ")[-1].strip()[:-4] + ".json"))
    # Span 3 failed validation, so span 4 is compared with span 2.
    assert report["drift"]["against_span"] == 2
    kinds = {(p["kind"], p.get("feature")) for p in report["problems"]}
    assert ("drift", "item_ids") in kinds, report["problems"]
    assert len(scenario["execs6"]["Trainer"]) == len(scenario["execs5"]["Trainer"])


def test_corrupted_span_is_stopped_by_validation(scenario):
    assert "data validation failed" in scenario["run5_error"]
    # A failed execution publishes no artifact: the error names the report's path.
    txt = scenario["run5_error"].split("report: ")[-1].strip()
    assert os.path.exists(txt) and "dead_letters" in open(txt).read()
    report = json.load(open(txt[:-4] + ".json"))
    assert report["passed"] is False and report["problems"][0]["kind"] == "dead_letters"
    # Judged on the newest span's own file: ~12%, though the window of 3 spans averages ~4%.
    assert report["window_spans"] == 3 and report["newest_span"]["files"] == 1
    assert report["newest_span"]["rate"] > 0.08
    window_rate = report["counts"]["events_dead_lettered"]["total"] / report["counts"]["events_read"]
    assert window_rate < 0.05
    assert "not like with like" in report["drift"]["why_not"]
    execs = scenario["execs5"]
    assert len(execs["Trainer"]) == len(scenario["execs4"]["Trainer"])
    pushed = [v for v in scenario["versions5"] if v.isdigit()]     # the serving folder after run 5
    assert len(pushed) == 1 + int(scenario["run4"]["pushed_model"]["pushed"])
    assert not [v for v in scenario["versions5"] if v.startswith(".tmp")]


def test_swapped_columns_span_is_stopped_and_the_next_clean_span_passes(scenario):
    err = scenario["run7_error"]
    assert "data validation failed" in err and "columns look swapped" in err
    report = json.load(open(err.split("report: ")[-1].strip()[:-4] + ".json"))
    checks = {p.get("check") for p in report["problems"] if p["kind"] == "id_columns"}
    assert {"item_overlap", "user_ids_are_items"} <= checks, report["problems"]
    assert report["id_columns"]["users_known_as_items"] > 0.9
    execs7, execs8 = scenario["execs7"], scenario["execs8"]
    assert len(execs7["Trainer"]) == len(scenario["execs6"]["Trainer"])      # nothing trained on it
    assert len(execs7["VersionedPusher"]) == len(scenario["execs6"]["VersionedPusher"])
    # The next clean span passes the gate and trains; whatever is pushed comes from it.
    assert execs8["ValidationGate"][-1] == "COMPLETE" and execs8["Trainer"][-1] == "COMPLETE"
    run8 = scenario["run8"]
    report8 = json.load(open(os.path.join(run8["validation_report"]["uri"], "validation_report.json")))
    assert report8["passed"] is True and report8["span"] == 6 and report8["id_columns"]["item_overlap"] > 0.9
    # The stopped spans' rows never reach training through a later window.
    ds = json.load(open(os.path.join(run8["dataset"]["uri"], "ptum", "manifest.json")))
    assert [os.path.basename(os.path.dirname(f)) for f in ds["inputs_read"]] == ["span-6"]
    assert report8["window_spans"] == 1
    if run8["pushed_model"]["pushed"]:
        assert run8["blessing"]["current_model"] in open(os.path.join(
            run8["pushed_model"]["pushed_destination"], "assets.extra", "ptum_pushed_from.txt")).read()
