"""The scheduled batch pipeline: ingest -> validate -> pre-train -> evaluate/bless -> push -> export.

With a generative model config (model.architecture generative): ingest -> validate -> Semantic
IDs -> train the generative retrieval model -> evaluate/bless -> push (no embedding export).

`create_pipeline(config)` returns a `tfx.dsl.Pipeline`; runners are thin (LocalDagRunner
here via `ptum pipeline run`; Airflow and Kubeflow V2 in pipelines/runners/).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import field
from typing import List, Literal, Optional

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from typing_extensions import Annotated

from ptum import fs
from ptum.config import Bool, Float, Int
from ptum.data.spans import resolve_spans, window_files   # noqa: F401 (resolve_spans: this module's interface)

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "schema.pbtxt")


@dataclass(config=ConfigDict(extra="forbid", validate_assignment=True))
class PipelineConfig:
    """One YAML file (see configs/pipeline.yaml); each key's type and range checked on load."""

    pipeline_root: str
    input_pattern: str                    # {SPAN} (logs/span-{SPAN}/events.csv) or {YYYY}/{MM}/{DD}
    serving_dir: str                      # models are pushed to <serving_dir>/<version>/
    pipeline_name: str = "ptum"
    metadata_path: str = ""               # default: <pipeline_root>/metadata.sqlite
    input_format: str = "csv"
    items_catalog: str = ""
    span: Optional[Annotated[Int, Field(ge=0)]] = None   # default: the latest span found
    span_window: Int = Field(1, ge=1)     # spans of history read per run
    model_config: str = ""                # PTUM YAML (configs/*.yaml) or a preset name (demo, beauty, ...)
    model_overrides: List[str] = field(default_factory=list)
    tokenize_options: dict = field(default_factory=dict)
    schema: Literal["import", "infer"] = "import"   # import (schemas/schema.pbtxt) | infer (SchemaGen)
    min_ndcg_at_10: Float = Field(0.0, ge=0.0, le=1.0)
    max_regression: Float = Field(0.0, ge=0.0)
    max_deadletter_rate: Float = Field(0.05, ge=0.0, le=1.0)
    max_oov_rate: Float = Field(0.2, ge=0.0, le=1.0)
    max_drift: Float = Field(0.3, ge=0.0)  # Jensen-Shannon vs the last validated earlier span; 0 = off
    drift_features: List[str] = field(default_factory=lambda: ["item_ids", "behavior_ids", "length"])
    # Id columns of the new window against the blessed model's data (swapped or shifted columns):
    min_item_overlap: Float = Field(0.5, ge=0.0, le=1.0)     # share of events whose item it knows
    max_id_crossing: Float = Field(0.2, ge=0.0, le=1.0)      # user ids that are its items, beyond its users
    max_id_ratio_change: Float = Field(3.0, ge=0.0)          # items per user, x or / this; 0 = off
    reuse_vocab: Bool = True              # the earlier span's blessed model's item vocabulary
    vocab_rebuild_oov_rate: Float = Field(0.05, ge=0.0, le=1.0)  # ... unless more events than this are out of it
    warm_start: Bool = True               # from that model, when vocabulary and model config match
    finetune_tasks: List[dict] = field(default_factory=list)  # see configs/pipeline.yaml
    # Gate the blessing on a linear probe of the user embeddings: {labels, label_column, min_auc}.
    embedding_probe: dict = field(default_factory=dict)
    export_embeddings: Bool = True        # (a generative model has no user embeddings: nothing exported)
    # model.architecture generative with generative.codes semantic: the SemanticIdsGen options
    # (`ptum semantic-ids` flags: attributes, vectors, vector_column, levels, codes, dim, seed,
    # quantizer, rqvae_epochs, collaborative_weight); the Semantic IDs are learned from the window's
    # dataset every run. id_model (a PTUM config: preset or YAML) + id_model_overrides: an id
    # model trained on the same window first (IdModelTrainer), its item embeddings joined to the
    # content vectors (`ptum semantic-ids --model`).
    semantic_ids: dict = field(default_factory=dict)
    beam_args: List[str] = field(default_factory=lambda: ["--direct_running_mode=in_memory"])
    enable_cache: Bool = True

    @classmethod
    def load(cls, path: str) -> "PipelineConfig":
        from dataclasses import fields

        from pydantic import ValidationError

        from ptum.config import ConfigError, config_error, preset_path, read_yaml

        d = read_yaml(path)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(f.name for f in fields(cls))}")
        base = os.path.dirname(os.path.abspath(path))
        try:
            cfg = cls(**d)
        except ValidationError as e:
            raise ConfigError(f"{path}: {config_error(e)}") from None
        def absolute(v):
            return os.path.normpath(os.path.join(base, v)) if v and fs.is_local(v) and not os.path.isabs(v) else v

        for name in ("pipeline_root", "input_pattern", "serving_dir", "metadata_path", "items_catalog"):
            setattr(cfg, name, absolute(getattr(cfg, name)))
        if cfg.model_config and preset_path(cfg.model_config) == cfg.model_config:   # a file, not a preset
            cfg.model_config = absolute(cfg.model_config)
        for task in cfg.finetune_tasks:
            task["labels"] = absolute(task.get("labels", ""))
        if cfg.embedding_probe:
            cfg.embedding_probe["labels"] = absolute(cfg.embedding_probe.get("labels", ""))
        for key in ("attributes", "vectors"):
            if cfg.semantic_ids.get(key):
                cfg.semantic_ids[key] = absolute(cfg.semantic_ids[key])
        idm = cfg.semantic_ids.get("id_model")
        if idm and preset_path(idm) == idm:                        # a file, not a preset
            cfg.semantic_ids["id_model"] = absolute(idm)
        return cfg


def _check_finetune_tasks(tasks: List[dict]) -> None:
    """Fail at pipeline construction (not hours later in a Trainer) on a malformed task."""
    from ptum.config import ConfigError
    from ptum.config import FinetuneConfig

    known = set(FinetuneConfig.model_fields)
    names = set()
    for i, task in enumerate(tasks):
        where = f"finetune_tasks[{i}]"
        for key in ("name", "labels"):
            if not task.get(key):
                raise ValueError(f"{where}: needs {key!r}")
        if not re.fullmatch(r"[A-Za-z0-9_]+", task["name"]) or task["name"] in names:
            raise ValueError(f"{where}: name {task['name']!r} must be unique and [A-Za-z0-9_]+")
        names.add(task["name"])
        unknown = set(task.get("config", {})) - known
        if unknown:
            raise ValueError(f"{where}: unknown config keys {sorted(unknown)} (known: {sorted(known)})")
        try:    # the fine-tune Trainer's own config, checked now: the task, each setting's type and range
            cfg = FinetuneConfig(**{**task.get("config", {}), "task": task.get("task", "classify")})
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if cfg.task == "classify" and not task.get("label_column"):
            raise ValueError(f"{where}: a classify task needs label_column")
        if fs.is_local(task["labels"]) and not fs.exists(task["labels"]):
            raise FileNotFoundError(f"{where}: labels {task['labels']} not found")


def _probe_parameters(probe: dict) -> dict:
    """The evaluator's probe gate from `embedding_probe` ({} = no probe)."""
    if not probe:
        return {}
    unknown = set(probe) - {"labels", "label_column", "min_auc"}
    if unknown:
        raise ValueError(f"embedding_probe: unknown keys {sorted(unknown)} (known: labels, label_column, min_auc)")
    if not probe.get("labels") or not probe.get("label_column"):
        raise ValueError("embedding_probe: needs labels and label_column (min_auc is optional)")
    return {"probe_labels": probe["labels"], "probe_label_column": probe["label_column"],
            "min_probe_auc": float(probe.get("min_auc", 0.0))}


SEMANTIC_IDS_FROM_PIPELINE = "<SemanticIdsGen output>"


def _model_config(cfg: PipelineConfig):
    """The PTUM config of the Trainer. A generative one spelling items as Semantic IDs gets
    them from the pipeline's SemanticIdsGen (a placeholder here, the artifact's path when the
    trainer runs); one that names an artifact itself is refused (its codes would not follow
    the window's vocabulary)."""
    from ptum.config import PTUMConfig, apply_override, preset_path, read_yaml

    d = read_yaml(preset_path(cfg.model_config)) if cfg.model_config else {}
    for item in cfg.model_overrides:
        apply_override(d, item)
    gen = d.get("generative") or {}
    if (d.get("model") or {}).get("architecture") == "generative" and gen.get("codes", "semantic") == "semantic":
        if gen.get("semantic_ids"):
            raise ValueError("generative.semantic_ids is set in the model config: the pipeline learns the Semantic "
                             "IDs of each window's dataset itself (SemanticIdsGen; its options under semantic_ids)")
        d["generative"] = {**gen, "semantic_ids": SEMANTIC_IDS_FROM_PIPELINE}
    return PTUMConfig.from_dict(d)


def _id_model_config(cfg: PipelineConfig):
    """The PTUM config of the IdModelTrainer (semantic_ids.id_model + id_model_overrides), or
    None without one."""
    from ptum.config import PTUMConfig

    if not cfg.semantic_ids.get("id_model"):
        return None
    overrides = cfg.semantic_ids.get("id_model_overrides") or []
    if not isinstance(overrides, list):
        raise ValueError("semantic_ids.id_model_overrides must be a list of key=value strings")
    return PTUMConfig.load(cfg.semantic_ids["id_model"], overrides)


def _check_generative(cfg: PipelineConfig, ptum_cfg, id_cfg=None) -> bool:
    """Whether the model config trains the generative retrieval model; what such a pipeline
    cannot do is refused here, at construction."""
    from components.generative_components import ID_MODEL_OPTIONS, SEMANTIC_ID_OPTIONS

    known = SEMANTIC_ID_OPTIONS + ID_MODEL_OPTIONS
    unknown = sorted(set(cfg.semantic_ids) - set(known))
    if unknown:
        raise ValueError(f"semantic_ids: unknown key(s) {unknown}; known: {list(known)}")
    if "collaborative_weight" in cfg.semantic_ids and not cfg.semantic_ids.get("id_model"):
        raise ValueError("semantic_ids.collaborative_weight weighs an id model's item embeddings: set "
                         "semantic_ids.id_model (a PTUM config trained on the same window first)")
    if id_cfg is not None and id_cfg.model.architecture == "generative":
        raise ValueError("semantic_ids.id_model must train the PTUM id model (its item embeddings), not a "
                         "generative one")
    if ptum_cfg.model.architecture != "generative":
        if cfg.semantic_ids:
            raise ValueError("semantic_ids is set but the model config does not train a generative model "
                             "(model.architecture generative)")
        return False
    if cfg.finetune_tasks or cfg.embedding_probe:
        raise ValueError("model.architecture generative has no user encoder: finetune_tasks and embedding_probe "
                         "need the PTUM model (remove them, or train it in another pipeline)")
    if ptum_cfg.generative.codes != "semantic" and cfg.semantic_ids:
        raise ValueError(f"semantic_ids is set but generative.codes is {ptum_cfg.generative.codes!r}")
    return True


# Long on purpose: the DAG reads top to bottom in the order it runs, each component wired where
# it stands (splitting it would scatter one picture over several functions).
def create_pipeline(cfg: PipelineConfig, resolvers: str = "earlier-span"):
    """`resolvers`: "earlier-span" (the vocabulary / warm-start model and the drift baseline come
    from spans before this one; re-runs of a span hit the cache) or "latest" (the latest blessed
    model and the latest statistics, with TFX's stock strategies: Kubeflow V2 / Vertex compile
    only those)."""
    from tfx import v1 as tfx
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

    from components.generative_components import ID_MODEL_OPTIONS, GenerativeTrainer, SemanticIdsGen
    from components.ptum_components import (EmbeddingExport, NextItemEvaluator, SequenceIngestion, ValidationGate,
                                            ValidationReport, VersionedPusher)
    from components.dataset_trainer import DATASET_TRAINER
    from components.resolvers import EarlierSpanBlessedModelStrategy, EarlierSpanStatisticsStrategy
    report_dir = os.path.join(cfg.pipeline_root, "validation_reports")
    if resolvers == "earlier-span":
        # Resolved now: the resolvers below need the span, and the resolved files are part of
        # the ingestion's cache key (new files in a span re-run it).
        span, by_span, left_out = window_files(cfg.input_pattern, cfg.span, cfg.span_window, report_dir)
        paths = [p for s in sorted(by_span) for p in by_span[s]]
        if left_out:
            print(f"span window: spans {left_out} left out (stopped by validation)", flush=True)
    else:
        # Resolved by the ingestion at run time: a compiled pipeline (Kubeflow V2, Vertex) carries
        # the pattern, not the files that existed when it was compiled.
        span, paths = (cfg.span if cfg.span is not None else -1), []
    std = tfx.types.standard_artifacts
    # What this span builds on: the latest blessed model and the last validated statistics of
    # an *earlier* span (a re-run of this span then sees the same inputs and hits the cache).
    if resolvers == "earlier-span":
        earlier_model = tfx.dsl.Resolver(
            strategy_class=EarlierSpanBlessedModelStrategy, config={"span": span},
            model=tfx.dsl.Channel(type=std.Model), model_blessing=tfx.dsl.Channel(type=std.ModelBlessing),
        ).with_id("earlier_span_blessed_model_resolver")
        earlier_stats = tfx.dsl.Resolver(
            strategy_class=EarlierSpanStatisticsStrategy, config={"span": span},
            statistics=tfx.dsl.Channel(type=std.ExampleStatistics), report=tfx.dsl.Channel(type=ValidationReport),
        ).with_id("earlier_span_statistics_resolver")
    elif resolvers == "latest":
        earlier_model = tfx.dsl.Resolver(
            strategy_class=LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=std.Model), model_blessing=tfx.dsl.Channel(type=std.ModelBlessing),
        ).with_id("previous_blessed_model_resolver")
        earlier_stats = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
            statistics=tfx.dsl.Channel(type=std.ExampleStatistics),
        ).with_id("previous_statistics_resolver")
    else:
        raise ValueError(f"resolvers must be 'earlier-span' or 'latest', not {resolvers!r}")
    ingestion = SequenceIngestion(
        input_paths=json.dumps(paths), input_pattern=cfg.input_pattern, span=span,
        span_window=cfg.span_window, input_format=cfg.input_format, stopped_reports=report_dir,
        baseline_model=earlier_model.outputs["model"] if cfg.reuse_vocab else None,
        reuse_vocab=int(cfg.reuse_vocab), vocab_rebuild_oov_rate=cfg.vocab_rebuild_oov_rate,
        items_catalog=cfg.items_catalog, beam_args=json.dumps(cfg.beam_args),
        tokenize_options=json.dumps(cfg.tokenize_options))
    statistics = tfx.components.StatisticsGen(examples=ingestion.outputs["examples"])
    if cfg.schema == "infer":
        schema = tfx.components.SchemaGen(statistics=statistics.outputs["statistics"], infer_feature_shape=False)
    else:
        schema = tfx.components.ImportSchemaGen(schema_file=SCHEMA_FILE)
    validator = tfx.components.ExampleValidator(statistics=statistics.outputs["statistics"],
                                                schema=schema.outputs["schema"])
    gate = ValidationGate(anomalies=validator.outputs["anomalies"], statistics=statistics.outputs["statistics"],
                          schema=schema.outputs["schema"], dataset=ingestion.outputs["dataset"],
                          baseline_statistics=earlier_stats.outputs["statistics"],
                          baseline_report=earlier_stats.outputs["report"] if resolvers == "earlier-span" else None,
                          max_deadletter_rate=cfg.max_deadletter_rate, max_oov_rate=cfg.max_oov_rate,
                          max_drift=cfg.max_drift, drift_features=json.dumps(cfg.drift_features),
                          min_item_overlap=cfg.min_item_overlap, max_id_crossing=cfg.max_id_crossing,
                          max_id_ratio_change=cfg.max_id_ratio_change,
                          report_dir=report_dir)
    ptum_cfg = _model_config(cfg)
    id_cfg = _id_model_config(cfg)
    generative = _check_generative(cfg, ptum_cfg, id_cfg)
    semantic_ids = id_trainer = None
    if not generative:
        trainer = tfx.components.Trainer(
            run_fn="components.trainer_module.run_fn",
            examples=ingestion.outputs["examples"], schema=schema.outputs["schema"],
            base_model=earlier_model.outputs["model"] if cfg.warm_start else None,
            train_args=tfx.proto.TrainArgs(num_steps=0), eval_args=tfx.proto.EvalArgs(num_steps=0),
            custom_config={"ptum_config": ptum_cfg.to_dict()}, custom_executor_spec=DATASET_TRAINER)
    else:
        # The generative retrieval model: Semantic IDs of this window's items (when it spells
        # items as them), then the same training as `ptum pretrain`, under the Trainer's id.
        if ptum_cfg.generative.codes == "semantic":
            if id_cfg is not None:      # the collaborative half of the item vectors
                id_trainer = tfx.components.Trainer(
                    run_fn="components.trainer_module.run_fn",
                    examples=ingestion.outputs["examples"], schema=schema.outputs["schema"],
                    train_args=tfx.proto.TrainArgs(num_steps=0), eval_args=tfx.proto.EvalArgs(num_steps=0),
                    custom_config={"ptum_config": id_cfg.to_dict()},
                    custom_executor_spec=DATASET_TRAINER).with_id("IdModelTrainer")
                id_trainer.add_upstream_node(gate)
            options = {k: v for k, v in cfg.semantic_ids.items() if k not in ID_MODEL_OPTIONS}
            semantic_ids = SemanticIdsGen(dataset=ingestion.outputs["dataset"], options=json.dumps(options),
                                          id_model=id_trainer.outputs["model"] if id_trainer else None)
            semantic_ids.add_upstream_node(gate)
        trainer = GenerativeTrainer(
            dataset=ingestion.outputs["dataset"], ptum_config=json.dumps(ptum_cfg.to_dict()),
            semantic_ids=semantic_ids.outputs["semantic_ids"] if semantic_ids else None).with_id("Trainer")
    trainer.add_upstream_node(gate)
    finetuners = []
    _check_finetune_tasks(cfg.finetune_tasks)
    for task in cfg.finetune_tasks:
        ft = tfx.components.Trainer(
            run_fn="components.finetune_module.run_fn",
            examples=ingestion.outputs["examples"], schema=schema.outputs["schema"],
            base_model=trainer.outputs["model"],
            train_args=tfx.proto.TrainArgs(num_steps=0), eval_args=tfx.proto.EvalArgs(num_steps=0),
            custom_config={"task": task}, custom_executor_spec=DATASET_TRAINER).with_id(f"Finetune_{task['name']}")
        finetuners.append(ft)
    latest_blessed = tfx.dsl.Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = NextItemEvaluator(model=trainer.outputs["model"], dataset=ingestion.outputs["dataset"],
                                  baseline_model=latest_blessed.outputs["model"],
                                  min_ndcg_at_10=cfg.min_ndcg_at_10, max_regression=cfg.max_regression,
                                  **_probe_parameters(cfg.embedding_probe))
    pusher = VersionedPusher(model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
                             base_directory=cfg.serving_dir)
    components = [earlier_model, earlier_stats, ingestion, statistics, schema, validator, gate,
                  *([id_trainer] if id_trainer else []), *([semantic_ids] if semantic_ids else []), trainer, *finetuners, latest_blessed, evaluator, pusher]
    if cfg.export_embeddings and not generative:
        components.append(EmbeddingExport(pushed_model=pusher.outputs["pushed_model"],
                                          dataset=ingestion.outputs["dataset"],
                                          beam_args=json.dumps(cfg.beam_args)))
    metadata_path = cfg.metadata_path or fs.join(cfg.pipeline_root, "metadata.sqlite")
    if fs.is_local(metadata_path):      # (orchestrators with their own MLMD ignore it)
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
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    except KeyboardInterrupt:
        n = mark_interrupted(cfg)
        raise PipelineInterrupted(f"interrupted: {n} running execution(s) marked CANCELED in "
                                  f"{_metadata_path(cfg)}; the next run re-runs them") from None
    return {**summarize(cfg), "this_run": last_run_states(cfg)}


def last_run_states(cfg: PipelineConfig) -> dict:
    """What the newest pipeline run did per component: ran, or reused the cached result of an
    earlier execution with the same inputs (TFX's cache)."""
    from ml_metadata.proto import metadata_store_pb2

    store = _store(cfg)
    runs = store.get_contexts_by_type("pipeline_run")
    if not runs:
        return {}
    executions = store.get_executions_by_context(max(runs, key=lambda c: c.id).id)
    names = {t.id: t.name.rsplit(".", 1)[-1] for t in store.get_execution_types_by_id(
        sorted({e.type_id for e in executions}))}
    state = metadata_store_pb2.Execution
    cached = sorted(names[e.type_id] for e in executions if e.last_known_state == state.CACHED)
    ran = sorted(names[e.type_id] for e in executions if e.last_known_state == state.COMPLETE)
    return {"ran": ran, "cached": cached}


class PipelineInterrupted(Exception):
    """The run was interrupted (SIGINT); its running executions are marked CANCELED."""


def _metadata_path(cfg: PipelineConfig) -> str:
    return cfg.metadata_path or os.path.join(cfg.pipeline_root, "metadata.sqlite")


def _store(cfg: PipelineConfig):
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    conn = metadata_store_pb2.ConnectionConfig()
    conn.sqlite.filename_uri = _metadata_path(cfg)
    return mlmd.MetadataStore(conn)


def mark_interrupted(cfg: PipelineConfig) -> int:
    """Executions left RUNNING by an interrupted run -> CANCELED (MLMD would otherwise show
    them running forever); returns how many."""
    from ml_metadata.proto import metadata_store_pb2

    store = _store(cfg)
    running = [e for e in store.get_executions() if e.last_known_state == metadata_store_pb2.Execution.RUNNING]
    for e in running:
        e.last_known_state = metadata_store_pb2.Execution.CANCELED
        e.custom_properties["ptum_interrupted"].string_value = "SIGINT"
    if running:
        store.put_executions(running)
    return len(running)


def _property_value(v):
    """An MLMD property as JSON would have it: numbers as numbers, JSON objects and lists
    (manifest counts, span checks) as objects, other strings as they are."""
    if v.HasField("int_value"):
        return v.int_value
    if v.HasField("double_value"):
        return v.double_value
    text = v.string_value
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def summarize(cfg: PipelineConfig) -> dict:
    """Latest artifacts of each kind from MLMD (SQLite)."""
    store = _store(cfg)
    out = {"metadata": _metadata_path(cfg)}

    def latest(type_name):
        arts = store.get_artifacts_by_type(type_name)
        return max(arts, key=lambda a: a.id) if arts else None

    for key, type_name in (("dataset", "ptum.SequenceDataset"),
                           ("validation_report", "ptum.ValidationReport"), ("evaluation", "ModelEvaluation"),
                           ("blessing", "ModelBlessing"), ("pushed_model", "PushedModel"),
                           ("embeddings", "ptum.EmbeddingTable"), ("semantic_ids", "ptum.SemanticIds")):
        a = latest(type_name)
        if a is not None:
            out[key] = {"uri": a.uri, **{k: _property_value(v) for k, v in a.custom_properties.items()}}
    runs = [a for a in store.get_artifacts_by_type("ModelRun") if "/Trainer/" in a.uri]
    if runs:   # the pre-training Trainer's checkpoints and TensorBoard logs
        out["trainer_run"] = {"uri": max(runs, key=lambda a: a.id).uri}
    # The newest model of each fine-tune Trainer (node id Finetune_<task>) and its metrics.
    for ctx in store.get_contexts_by_type("node"):
        node = ctx.name.rsplit(".", 1)[-1]
        if not node.startswith("Finetune_"):
            continue
        models = [a for a in store.get_artifacts_by_context(ctx.id) if f"/{node}/model/" in a.uri]
        if models:
            uri = max(models, key=lambda a: a.id).uri
            metrics = None
            path = os.path.join(uri, "Format-Serving", "finetuned", "metrics.json")
            if os.path.exists(path):
                with open(path) as f:
                    metrics = json.load(f)
            out.setdefault("finetune", {})[node[len("Finetune_"):]] = {"uri": uri, "metrics": metrics}
    return out
