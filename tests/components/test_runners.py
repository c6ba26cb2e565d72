"""Scheduler runners compile where their optional extras are installed (kfp: the modern lock;
Airflow: neither lock), and input spans are resolved at build or at run time."""
import json
import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _config(tmp_path):
    (tmp_path / "logs" / "span-1").mkdir(parents=True)
    (tmp_path / "logs" / "span-1" / "events.csv").write_text("user_id,item_id,timestamp\nu,a,1\n")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("pipeline_root: root\ninput_pattern: logs/span-{SPAN}/events.csv\nserving_dir: serving\n")
    return str(cfg)


def test_kubeflow_v2_compiles(tmp_path):
    pytest.importorskip("kfp")
    from pipelines.runners.kubeflow_v2 import compile_pipeline

    out = compile_pipeline(_config(tmp_path), "example/ptum:1", str(tmp_path / "p.json"))
    spec = json.dumps(json.load(open(out)))
    assert "SequenceIngestion" in spec
    # The input pattern is in the compiled pipeline, not the files found while compiling.
    assert "span-{SPAN}/events.csv" in spec and "span-1/events.csv" not in spec
    assert "components.dataset_trainer.DatasetTrainerExecutor" in spec  # both Trainers get the dataset path


def test_a_generative_pipeline_compiles_for_kubeflow_v2(tmp_path):
    pytest.importorskip("kfp")
    from pipelines.runners.kubeflow_v2 import compile_pipeline

    cfg = _config(tmp_path)
    with open(cfg, "a") as f:
        f.write("model_config: beauty-generative\nsemantic_ids: {levels: 2, codes: 16}\n")
    spec = json.dumps(json.load(open(compile_pipeline(cfg, "example/ptum:1", str(tmp_path / "p.json")))))
    assert "SemanticIdsGen" in spec and "GenerativeTrainer" in spec and "EmbeddingExport" not in spec


def test_compiled_pipelines_resolve_inputs_at_run_time(tmp_path):
    from pipelines.tfx_pipeline import PipelineConfig, create_pipeline

    cfg = PipelineConfig.load(_config(tmp_path))
    cfg.input_pattern = "gs://no-such-bucket/logs/span-{SPAN}/events.csv"    # nothing to glob now
    pipeline = create_pipeline(cfg, resolvers="latest")
    (ingestion,) = [c for c in pipeline.components if c.id == "SequenceIngestion"]
    props = ingestion.exec_properties
    assert props["input_paths"] == "[]" and props["input_pattern"] == cfg.input_pattern
    assert props["span"] == -1 and props["span_window"] == cfg.span_window
    assert not os.path.exists("gs:")                                            # no local "gs:" folder


def test_local_pipelines_resolve_inputs_when_built(tmp_path):
    from pipelines.tfx_pipeline import PipelineConfig, create_pipeline

    pipeline = create_pipeline(PipelineConfig.load(_config(tmp_path)))
    (ingestion,) = [c for c in pipeline.components if c.id == "SequenceIngestion"]
    assert json.loads(ingestion.exec_properties["input_paths"]) == [str(tmp_path / "logs" / "span-1" / "events.csv")]
    assert ingestion.exec_properties["span"] == 1


def test_airflow_dag_builds(tmp_path):
    pytest.importorskip("airflow")
    from pipelines.runners.airflow_dag import make_dag

    dag = make_dag(_config(tmp_path))
    assert any("Trainer" in t.task_id for t in dag.tasks)


def test_span_resolution(tmp_path):
    from pipelines.tfx_pipeline import resolve_spans

    for s in (1, 2, 3, 10):
        (tmp_path / f"span-{s}").mkdir()
        (tmp_path / f"span-{s}" / "e.csv").write_text("x")
    pattern = str(tmp_path / "span-{SPAN}" / "e.csv")
    # The window counts span numbers back from the chosen span (e.g. the last 8 days).
    span, paths = resolve_spans(pattern, None, 8)
    assert span == 10 and [os.path.basename(os.path.dirname(p)) for p in paths] == ["span-3", "span-10"]
    span, paths = resolve_spans(pattern, 2, 1)
    assert span == 2 and len(paths) == 1
    with pytest.raises(FileNotFoundError):
        resolve_spans(pattern, 5, 1)


def test_date_span_patterns(tmp_path):
    from pipelines.tfx_pipeline import resolve_spans

    for day in ("2026-11-20", "2026-11-23", "2026-11-24", "2026-11-25"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "events.csv").write_text("x")
    pattern = str(tmp_path / "{YYYY}-{MM}-{DD}" / "events.csv")
    span, paths = resolve_spans(pattern, None, 3)  # the latest day and the two before it
    assert span == 20782  # days since 1970-01-01 for 2026-11-25
    assert [os.path.basename(os.path.dirname(p)) for p in paths] == ["2026-11-23", "2026-11-24", "2026-11-25"]
    with pytest.raises(ValueError):
        resolve_spans(str(tmp_path / "{YYYY}-{MM}" / "events.csv"), None, 1)


def test_malformed_finetune_tasks_fail_before_running(tmp_path):
    from pipelines.tfx_pipeline import _check_finetune_tasks

    labels = tmp_path / "users.csv"
    labels.write_text("user_id,gender\nu,F\n")
    good = {"name": "gender", "labels": str(labels), "label_column": "gender", "config": {"epochs": 2}}
    _check_finetune_tasks([good])
    for bad, msg in (({**good, "config": {"epochz": 2}}, "unknown config keys"),
                     ({**good, "labels": str(tmp_path / "nope.csv")}, "not found"),
                     ({k: v for k, v in good.items() if k != "label_column"}, "label_column"),
                     ({**good, "name": "a b"}, "name"),
                     ({**good, "task": "regress"}, "finetune.task"),
                     ({**good, "config": {"epochs": "many"}}, r"finetune_tasks\[0\]: finetune.epochs")):
        with pytest.raises((ValueError, FileNotFoundError), match=msg):
            _check_finetune_tasks([bad])
    with pytest.raises(ValueError, match="unique"):
        _check_finetune_tasks([good, good])
