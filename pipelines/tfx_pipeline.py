"""The scheduled batch pipeline: ingest -> validate -> pre-train -> evaluate/bless -> push -> export.

`create_pipeline(config)` returns a `tfx.dsl.Pipeline`; runners are thin (LocalDagRunner
here via `ptum pipeline run`; Airflow and Kubeflow V2 in pipelines/runners/).
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "schema.pbtxt")


@dataclass
class PipelineConfig:
    """One YAML file (see configs/pipeline.yaml)."""

    pipeline_root: str
    input_pattern: str                    # may contain {SPAN}, e.g. logs/span-{SPAN}/events.csv
    serving_dir: str                      # models are pushed to <serving_dir>/<version>/
    pipeline_name: str = "ptum"
    metadata_path: str = ""               # default: <pipeline_root>/metadata.sqlite
    input_format: str = "csv"
    items_catalog: str = ""
    span: Optional[int] = None            # default: the latest span found
    span_window: int = 1                  # spans of history read per run
    model_config: str = ""                # PTUM YAML (configs/*.yaml)
    model_overrides: List[str] = field(default_factory=list)
    tokenize_options: dict = field(default_factory=dict)
    schema: str = "import"                # import (schemas/schema.pbtxt) | infer (SchemaGen)
    min_ndcg_at_10: float = 0.0
    max_regression: float = 0.0
    max_deadletter_rate: float = 0.05
    max_oov_rate: float = 0.2
    export_embeddings: bool = True
    beam_args: List[str] = field(default_factory=lambda: ["--direct_running_mode=in_memory"])
    enable_cache: bool = True

    @classmethod
    def load(cls, path: str) -> "PipelineConfig":
        import yaml

        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f) or {}
        base = os.path.dirname(os.path.abspath(path))
        cfg = cls(**d)
        for name in ("pipeline_root", "input_pattern", "serving_dir", "metadata_path", "items_catalog",
                     "model_config"):
            v = getattr(cfg, name)
            if v and not os.path.isabs(v) and "://" not in v:
                setattr(cfg, name, os.path.normpath(os.path.join(base, v)))
        return cfg


def resolve_spans(pattern: str, span: Optional[int], window: int):
    """({SPAN} pattern, requested span or latest, window) -> (span, input paths)."""
    if "{SPAN}" not in pattern:
        return 0, [pattern]
    regex = re.compile(re.escape(pattern).replace(re.escape("{SPAN}"), r"(\d+)") + "$")
    found = {}
    for path in glob.glob(pattern.replace("{SPAN}", "*")):
        m = regex.match(path)
        if m:
            found.setdefault(int(m.group(1)), []).append(path)
    if not found:
        raise FileNotFoundError(f"no input matches {pattern}")
    span = max(found) if span is None else span
    if span not in found:
        raise FileNotFoundError(f"span {span} not found for {pattern} (have {sorted(found)})")
    paths = [p for s in sorted(found) if span - window < s <= span for p in sorted(found[s])]
    return span, paths


def create_pipeline(cfg: PipelineConfig):
    from tfx import v1 as tfx
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

    from components.ptum_components import (EmbeddingExport, NextItemEvaluator, SequenceIngestion,
                                            ValidationGate, VersionedPusher)
    from ptum.config import PTUMConfig

    span, paths = resolve_spans(cfg.input_pattern, cfg.span, cfg.span_window)
    ingestion = SequenceIngestion(
        input_paths=json.dumps(paths), input_format=cfg.input_format, span=span,
        items_catalog=cfg.items_catalog, beam_args=json.dumps(cfg.beam_args),
        tokenize_options=json.dumps(cfg.tokenize_options))
    statistics = tfx.components.StatisticsGen(examples=ingestion.outputs["examples"])
    if cfg.schema == "infer":
        schema = tfx.components.SchemaGen(statistics=statistics.outputs["statistics"], infer_feature_shape=False)
    else:
        schema = tfx.components.ImportSchemaGen(schema_file=SCHEMA_FILE)
    validator = tfx.components.ExampleValidator(statistics=statistics.outputs["statistics"],
                                                schema=schema.outputs["schema"])
    gate = ValidationGate(anomalies=validator.outputs["anomalies"], dataset=ingestion.outputs["dataset"],
                          max_deadletter_rate=cfg.max_deadletter_rate, max_oov_rate=cfg.max_oov_rate,
                          report_dir=os.path.join(cfg.pipeline_root, "validation_reports"))
    ptum_cfg = PTUMConfig.load(cfg.model_config or None, cfg.model_overrides)
    trainer = tfx.components.Trainer(
        run_fn="components.trainer_module.run_fn",
        examples=ingestion.outputs["examples"], schema=schema.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=0), eval_args=tfx.proto.EvalArgs(num_steps=0),
        custom_config={"ptum_config": ptum_cfg.to_dict()})
    trainer.add_upstream_node(gate)
    latest_blessed = tfx.dsl.Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = NextItemEvaluator(model=trainer.outputs["model"], dataset=ingestion.outputs["dataset"],
                                  baseline_model=latest_blessed.outputs["model"],
                                  min_ndcg_at_10=cfg.min_ndcg_at_10, max_regression=cfg.max_regression)
    pusher = VersionedPusher(model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
                             base_directory=cfg.serving_dir)
    components = [ingestion, statistics, schema, validator, gate, trainer, latest_blessed, evaluator, pusher]
    if cfg.export_embeddings:
        components.append(EmbeddingExport(pushed_model=pusher.outputs["pushed_model"],
                                          dataset=ingestion.outputs["dataset"],
                                          beam_args=json.dumps(cfg.beam_args)))
    metadata_path = cfg.metadata_path or os.path.join(cfg.pipeline_root, "metadata.sqlite")
    os.makedirs(os.path.dirname(metadata_path) or ".", exist_ok=True)
    return tfx.dsl.Pipeline(
        pipeline_name=cfg.pipeline_name, pipeline_root=cfg.pipeline_root, components=components,
        enable_cache=cfg.enable_cache,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=cfg.beam_args)


def run_local(cfg: PipelineConfig) -> dict:
    """Run with LocalDagRunner; returns where things are (and the run's outcome)."""
    from tfx import v1 as tfx

    pipeline = create_pipeline(cfg)
    tfx.orchestration.LocalDagRunner().run(pipeline)
    return summarize(cfg)


def summarize(cfg: PipelineConfig) -> dict:
    """Latest artifacts of each kind from MLMD (SQLite)."""
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    conn = metadata_store_pb2.ConnectionConfig()
    conn.sqlite.filename_uri = cfg.metadata_path or os.path.join(cfg.pipeline_root, "metadata.sqlite")
    store = mlmd.MetadataStore(conn)
    out = {"metadata": conn.sqlite.filename_uri}

    def latest(type_name):
        arts = store.get_artifacts_by_type(type_name)
        return max(arts, key=lambda a: a.id) if arts else None

    for key, type_name in (("validation_report", "PtumValidationReport"), ("evaluation", "ModelEvaluation"),
                           ("blessing", "ModelBlessing"), ("pushed_model", "PushedModel"),
                           ("embeddings", "PtumEmbeddingTable")):
        a = latest(type_name)
        if a is not None:
            out[key] = {"uri": a.uri, **{k: (v.int_value if v.HasField("int_value") else v.string_value)
                                         for k, v in a.custom_properties.items()}}
    return out
