"""Subcommands beyond generate/tokenize: each imports its stack lazily."""
from __future__ import annotations

import json
import os
import sys


def add_subcommands(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train the PTUM user model (MBP + NBP), or the generative "
                       "retrieval model (model.architecture generative), on a sequence dataset",
                       epilog="""examples:
  ptum pretrain --data data/ --output model/ --config demo
  ptum pretrain --data beauty/ --output model/ --config beauty --set train.epochs=50
  ptum pretrain --data data-2/ --output model-2/ --config demo --warm-start model/
  ptum pretrain --data beauty/ --output gen/ --config beauty-generative --semantic-ids sid/""")
    p.add_argument("--data", required=True, help="sequence dataset folder (from ptum tokenize)")
    p.add_argument("--output", required=True, help="model folder")
    p.add_argument("--config", default=None,
                   help="YAML config file, or a preset shipped with the package: "
                        "beauty, beauty-generative, beauty-ptum-faithful, demo, ml100k, ml100k-nextitem, user-embeddings "
                        "(none: the defaults of ptum.config.PTUMConfig, listed in the README)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set model.num_blocks=1 (repeatable)")
    p.add_argument("--semantic-ids", metavar="DIR", default=None,
                   help="shorthand for --set generative.semantic_ids=DIR (a ptum semantic-ids artifact of this "
                        "dataset, for model.architecture generative)")
    p.add_argument("--epochs", type=int, default=None, help="shorthand for --set train.epochs=N")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--warm-start", metavar="MODEL_DIR",
                   help="initialise from a finished model trained on the same vocabulary and model config "
                        "(tokenize with --vocab-from that model's dataset)")

    e = sub.add_parser("evaluate", help="next-item metrics (full ranking) of a model on a split")
    e.add_argument("--model", required=True, help="a finished model folder (from ptum pretrain)")
    e.add_argument("--data", required=True, help="the sequence dataset it was trained on (same vocabulary)")
    e.add_argument("--split", default="test", help="split whose last behavior is the target")
    e.add_argument("--output", default=None, help="also write the metrics JSON here")
    e.add_argument("--beam-size", type=int, default=None,
                   help="a generative model: beams kept per decoding step (default: its generative.beam_size)")

    _add_export_parsers(sub)

    f = sub.add_parser("finetune", help="fine-tune the pre-trained user model for a downstream task")
    f.add_argument("--pretrained", required=True, help="model folder from ptum pretrain")
    f.add_argument("--data", required=True, help="the sequence dataset (same vocabulary)")
    f.add_argument("--labels", required=True, help="CSV/Parquet: user_id + labels, or impressions for ctr")
    f.add_argument("--task", choices=["classify", "ctr"], required=True,
                   help="classify: a user label; ctr: user x item clicks from impressions")
    f.add_argument("--label-column", default=None, help="classify: the label column (ctr: clicked)")
    f.add_argument("--mode", choices=["full", "frozen"], default="full",
                   help="full: head, then encoder + head; frozen: head on fixed embeddings")
    f.add_argument("--output", required=True, help="fine-tuned model folder")
    f.add_argument("--config", default=None, help="YAML with FinetuneConfig keys")
    f.add_argument("--from-scratch", action="store_true", help="same network, no pre-trained weights")

    _add_semantic_ids(sub)
    _add_cold_start(sub)

    pl = sub.add_parser("pipeline", help="the TFX pipeline (validate, pre-train, evaluate, push, export)")
    pl_sub = pl.add_subparsers(dest="pipeline_command", required=True)
    pr = pl_sub.add_parser("run", help="run once with LocalDagRunner (MLMD in SQLite)")
    pr.add_argument("--config", required=True, help="pipeline YAML (see configs/pipeline.yaml)")
    pr.add_argument("--span", type=int, default=None, help="default: the latest span")

    d = sub.add_parser("demo", help="run the main job end to end on generated sample logs")
    d.add_argument("--workdir", default="demo-output", help="folder for the logs, the pipeline root and its outputs")
    d.add_argument("--users", type=int, default=2000, help="users in the generated logs")
    d.add_argument("--items", type=int, default=800, help="items in the generated logs")
    d.add_argument("--seed", type=int, default=0, help="seed of the generated logs")


def _add_export_parsers(sub) -> None:
    """export-model, export-embeddings and evaluate-embeddings."""
    x = sub.add_parser("export-model", help="write a versioned user-embedding SavedModel for TF Serving")
    x.add_argument("--model", required=True, help="a finished model folder (from ptum pretrain)")
    x.add_argument("--output", required=True, help="serving base folder: <output>/<version>/ is written")
    x.add_argument("--version", type=int, default=None,
                   help="default: the model's own version, the epoch second its training finished")

    b = sub.add_parser("export-embeddings", help="Beam job: embed every user of a dataset into Parquet",
                       epilog="""examples:
  ptum export-embeddings --model model/ --data data/ --output emb/
  ptum export-embeddings --model serving/user_model/<version> --data data/ --output emb/ \\
      --expected-sha256 <the digest export-model printed>

Pipeline options go after `--`.""")
    b.add_argument("--model", required=True, help="a model folder or a SavedModel version folder")
    b.add_argument("--data", required=True, help="the sequence dataset whose users are embedded")
    b.add_argument("--output", required=True, help="embedding table folder (Parquet; manifest last)")
    b.add_argument("--split", default=None, help="default: test (full histories) or the first split")
    b.add_argument("--batch-rows", type=int, default=2048, help="users embedded per SavedModel call")
    b.add_argument("--tfrecord", action="store_true", help="also write TFRecord files")
    b.add_argument("--expected-sha256", default=None,
                   help="refuse a SavedModel whose digest differs (as printed by export-model, or the "
                        "pipeline's pushed model); without it only its own metadata is checked")

    q = sub.add_parser("evaluate-embeddings", help="quality report of an exported user-embedding table")
    q.add_argument("--embeddings", required=True, help="an export-embeddings output folder")
    q.add_argument("--data", default=None, help="the dataset (bag-of-items baselines, future windows)")
    q.add_argument("--labels", default=None, help="user labels (CSV/Parquet with user_id)")
    q.add_argument("--label-column", action="append", default=[], help="repeat for several labels")
    q.add_argument("--model", default=None, help="the model folder: untrained baseline and future windows")
    q.add_argument("--folds", type=int, default=5, help="cross-validation folds of the linear probes")
    q.add_argument("--repeats", type=int, default=5, help="repetitions of the cross-validation (seeds)")
    q.add_argument("--fractions", default="1.0", help="label fractions, e.g. 0.1,1.0")
    q.add_argument("--window", type=int, default=None, help="future window W (default: the dataset's, or 10)")
    q.add_argument("--no-recompute", action="store_true", help="skip the frozen vs recomputed comparison")
    q.add_argument("--ann", action="store_true",
                   help="retrieve for every exported user from the exported item table with a faiss HNSW "
                        "inner-product index; report its agreement@10 with the exact scores (history left out "
                        "with --data) and both speeds; with --model also the future window's recall@10 retrieved "
                        "from the exported item table, exactly and through the index")
    q.add_argument("--output", default=None, help="report folder: report.json, report.md, projection.png")


def _add_cold_start(sub) -> None:
    cs = sub.add_parser("cold-start", help="recommending items never seen in training: hold out a share of the "
                        "test targets' items, code them from content, train, report (TIGER's cold-start setting)",
                        epilog="""example:
  ptum cold-start --data beauty/ --output cold/ --attributes Beauty_item2attributes.json
Writes cold/semantic_ids, cold/generative, cold/id_model, cold/report.json and report.md.""")
    cs.add_argument("--data", required=True, help="sequence dataset folder (from ptum tokenize)")
    cs.add_argument("--output", required=True, help="folder for the codes, both models and the report")
    cs.add_argument("--config", default="beauty-generative", help="generative model config (YAML or preset)")
    cs.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a generative config value (repeatable)")
    cs.add_argument("--id-config", default="beauty", help="id model config (YAML or preset)")
    cs.add_argument("--id-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override an id model config value (repeatable)")
    cs.add_argument("--no-id-model", action="store_true", help="do not train and report the id model")
    cs.add_argument("--share", type=float, default=0.05, help="share of the test targets' items held out (TIGER: 0.05)")
    cs.add_argument("--epsilon", type=float, default=0.1,
                    help="at most floor(epsilon * 10) (at least 1) new items in a top-10 list (TIGER's epsilon)")
    cs.add_argument("--attributes", default=None, help="as for ptum semantic-ids")
    cs.add_argument("--vectors", default=None, help="as for ptum semantic-ids")
    cs.add_argument("--vector-column", default="vector", help="as for ptum semantic-ids")
    cs.add_argument("--levels", type=int, default=3, help="as for ptum semantic-ids")
    cs.add_argument("--codes", type=int, default=256, help="as for ptum semantic-ids")
    cs.add_argument("--dim", type=int, default=64, help="as for ptum semantic-ids")
    cs.add_argument("--quantizer", choices=["kmeans", "rqvae"], default="kmeans", help="as for ptum semantic-ids")
    cs.add_argument("--collaborative-weight", type=float, default=1.0,
                    help="weight of the id model's item embeddings joined to the content vectors the codes are "
                         "learned from (0: content alone)")
    cs.add_argument("--seed", type=int, default=0, help="which items are held out, and the codes' seed")


def _add_semantic_ids(sub) -> None:
    si = sub.add_parser("semantic-ids", help="learn Semantic IDs (code tuples) for a dataset's items from content",
                        epilog="Content: the catalog's title words and categories, --attributes, --vectors; "
                               "items without any take codes from --model's item embeddings.")
    si.add_argument("--data", required=True, help="sequence dataset folder (from ptum tokenize)")
    si.add_argument("--output", required=True, help="artifact folder (codes.parquet, codebooks, report, manifest)")
    si.add_argument("--attributes", default=None,
                    help="JSON object item id -> list of attribute ids (e.g. Amazon's *_item2attributes.json)")
    si.add_argument("--vectors", default=None, help="Parquet of precomputed item vectors (item_id + a list column)")
    si.add_argument("--vector-column", default="vector", help="with --vectors: the list<float> column")
    si.add_argument("--model", default=None, help="a pre-trained id model folder: its item embeddings join the "
                    "content vectors (and code items without content); one trained to early stopping gives codes "
                    "that decode better than a short run's")
    si.add_argument("--collaborative-weight", type=float, default=1.0,
                    help="with --model: weight of the item embedding joined to the content vector (0: only fill in "
                         "items without content)")
    si.add_argument("--levels", type=int, default=3, help="codebooks (TIGER: 3)")
    si.add_argument("--codes", type=int, default=256, help="codes per codebook (TIGER: 256)")
    si.add_argument("--dim", type=int, default=64, help="content vector size (TF-IDF reduced by SVD)")
    si.add_argument("--quantizer", choices=["kmeans", "rqvae"], default="kmeans",
                    help="kmeans: residual k-means on the item vectors | rqvae: an RQ-VAE (Keras) quantizing a "
                         "learned latent (k-means initialised codebooks, dead-code restarts, commitment loss)")
    si.add_argument("--rqvae-epochs", type=int, default=100, help="with --quantizer rqvae: training epochs")
    si.add_argument("--seed", type=int, default=0, help="the same seed gives the same codes")


def dispatch(args, extra) -> int:
    if args.command == "pretrain":
        return _pretrain(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "export-model":
        return _export_model(args)
    if args.command == "export-embeddings":
        return _export_embeddings(args, extra)
    if args.command == "finetune":
        return _finetune(args)
    if args.command == "evaluate-embeddings":
        return _evaluate_embeddings(args)
    if args.command == "semantic-ids":
        return _semantic_ids(args)
    if args.command == "cold-start":
        return _cold_start(args)
    if args.command == "pipeline":
        return _pipeline(args)
    if args.command == "demo":
        return _demo(args, extra)
    raise SystemExit(f"unknown command {args.command}")


def _keras_backend_default() -> None:
    """TensorFlow unless KERAS_BACKEND says otherwise; Keras (and its backend) imported with
    the backend's known start-up noise filtered out of stderr (see ptum.cli.console.import_quietly)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from ptum.cli.console import import_quietly

    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import_quietly("tensorflow")
    import_quietly("keras")


def _pretrain(a) -> int:
    from ptum.config import ConfigError, PTUMConfig
    from ptum.data.contracts import DatasetError, open_dataset

    try:   # the config and the dataset checked before TensorFlow is imported (seconds sooner)
        overrides = list(a.set) + ([f"train.epochs={a.epochs}"] if a.epochs is not None else []) + \
            ([f"generative.semantic_ids={a.semantic_ids}"] if a.semantic_ids else [])
        cfg = PTUMConfig.load(a.config, overrides)
        open_dataset(a.data)
    except (ConfigError, DatasetError) as e:
        print(f"ptum pretrain: error: {e}", file=sys.stderr)
        return 2
    _keras_backend_default()
    from ptum.training.pretrain import TrainingError, pretrain

    try:
        meta = pretrain(a.data, a.output, cfg, resume=not a.no_resume, warm_start=a.warm_start)
    except (ConfigError, DatasetError, TrainingError) as e:
        print(f"ptum pretrain: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"model": a.output, "valid": meta["valid"], "best_epoch": meta["best_epoch"],
                      "train_seconds": meta["train_seconds"], "warm_start": meta["warm_start"]}))
    return 0


def _evaluate(a) -> int:
    _keras_backend_default()
    from ptum.data.contracts import DatasetError
    from ptum.evaluation.ranking import NonFiniteScores, evaluate_model
    from ptum.model.saving import ModelError

    try:
        result = evaluate_model(a.model, a.data, a.split, beam_size=a.beam_size)
    except (DatasetError, ModelError, NonFiniteScores, ValueError) as e:
        print(f"ptum evaluate: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if a.output:
        from ptum.data.contracts import write_json_atomic
        write_json_atomic(a.output, result)
    print(text)
    return 0


def _export_model(a) -> int:
    _keras_backend_default()
    from ptum.model.saving import ModelError
    from ptum.serving.saved_model import export_saved_model

    try:
        before = set(os.listdir(a.output)) if os.path.isdir(a.output) else set()
        path = export_saved_model(a.model, a.output, version=a.version)
    except (ModelError, FileExistsError) as e:
        print(f"ptum export-model: error: {e}", file=sys.stderr)
        return 2
    from ptum.serving.saved_model import read_export_metadata
    meta = read_export_metadata(path)
    print(json.dumps({"saved_model": path, "version": meta["version"], "saved_model_sha256": meta["saved_model_sha256"],
                      "already_exported": os.path.basename(path) in before}))
    return 0


def _evaluate_embeddings(a) -> int:
    from ptum.evaluation.embeddings import EmbeddingEvalError, evaluate_embeddings

    try:
        fractions = [float(x) for x in a.fractions.split(",") if x.strip()]
    except ValueError:
        print(f"ptum evaluate-embeddings: error: --fractions {a.fractions!r}: numbers like 0.1,1.0", file=sys.stderr)
        return 2
    if a.model:
        _keras_backend_default()
    from ptum.data.contracts import DatasetError
    from ptum.model.saving import ModelError

    try:
        report = evaluate_embeddings(a.embeddings, a.data, a.labels, a.label_column, a.model, a.folds, a.repeats,
                                     fractions, a.window, not a.no_recompute, a.output, ann=a.ann)
    except (EmbeddingEvalError, DatasetError, ModelError) as e:
        print(f"ptum evaluate-embeddings: error: {e}", file=sys.stderr)
        return 2
    from ptum.evaluation.embeddings import markdown
    print(markdown(report))
    return 0


def _export_embeddings(a, extra) -> int:
    from ptum import fs
    from ptum.data.contracts import DatasetError, open_dataset, output_folder_problem

    # Paths checked before TensorFlow and Beam are imported (seconds to report a typo).
    problem = None
    if fs.is_local(a.model) and not fs.isdir(a.model):
        problem = f"--model {a.model}: no such model folder"
    elif output_folder_problem(a.output):
        problem = output_folder_problem(a.output)
    elif a.batch_rows < 1:
        problem = f"--batch-rows {a.batch_rows}: must be >= 1"
    else:
        try:
            ds = open_dataset(a.data)
            if a.split is not None and a.split not in ds.splits:
                problem = f"--split {a.split}: the dataset has {list(ds.splits)}"
        except DatasetError as e:
            problem = str(e)
    if problem:
        print(f"ptum export-embeddings: error: {problem}", file=sys.stderr)
        return 2
    _keras_backend_default()
    from ptum.model.saving import ModelError
    from ptum.serving.export_embeddings import ExportError, run

    try:
        manifest = run(a.model, a.data, a.output, split=a.split, batch_rows=a.batch_rows, tfrecord=a.tfrecord,
                       beam_args=extra, expected_sha256=a.expected_sha256)
    except (ExportError, DatasetError, ModelError) as e:
        print(f"ptum export-embeddings: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"output": a.output, "counts": manifest["counts"], "model_version": manifest["model_version"]},
                     indent=2))
    return 0


def _finetune(a) -> int:
    from ptum.config import ConfigError, FinetuneConfig, read_yaml
    from ptum.data.contracts import DatasetError, open_dataset

    try:   # the config and the dataset checked before TensorFlow is imported
        d = read_yaml(a.config) if a.config else {}
        cfg = FinetuneConfig(**{**d, "task": a.task, "mode": a.mode})
        open_dataset(a.data)
    except (ConfigError, DatasetError, TypeError, ValueError) as e:
        print(f"ptum finetune: error: {e}", file=sys.stderr)
        return 2
    _keras_backend_default()
    from ptum.model.saving import ModelError
    from ptum.training.finetune import LabelError, run

    try:
        out = run(a.pretrained, a.data, a.labels, a.output, cfg, label_column=a.label_column,
                  from_scratch=a.from_scratch)
    except (LabelError, DatasetError, ModelError, ConfigError, TypeError, ValueError) as e:
        print(f"ptum finetune: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"output": a.output, "valid": out["valid"], "labels": out["labels"]}, indent=2))
    return 0


def _semantic_ids(a) -> int:
    if a.model or a.quantizer == "rqvae":
        _keras_backend_default()
    from ptum.data.contracts import DatasetError
    from ptum.model.saving import ModelError
    from ptum.training.semantic_ids import SemanticIdError, learn_semantic_ids

    try:
        manifest = learn_semantic_ids(a.data, a.output, attributes=a.attributes, vectors=a.vectors,
                                      vector_column=a.vector_column, model=a.model,
                                      collaborative_weight=a.collaborative_weight, levels=a.levels, codes=a.codes,
                                      dim=a.dim, seed=a.seed, quantizer=a.quantizer, rqvae_epochs=a.rqvae_epochs)
    except (SemanticIdError, DatasetError, ModelError) as e:
        print(f"ptum semantic-ids: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"output": a.output, "counts": manifest["counts"], "report": manifest["report"]}, indent=2))
    return 0


def _cold_start(a) -> int:
    _keras_backend_default()
    from ptum.config import ConfigError
    from ptum.data.contracts import DatasetError
    from ptum.training.cold_start import cold_start
    from ptum.model.saving import ModelError
    from ptum.training.runtime import TrainingError
    from ptum.training.semantic_ids import SemanticIdError

    try:
        report = cold_start(a.data, a.output, config=a.config, overrides=a.set,
                            id_config=None if a.no_id_model else a.id_config, id_overrides=a.id_set, share=a.share,
                            epsilon=a.epsilon, seed=a.seed, attributes=a.attributes, vectors=a.vectors,
                            vector_column=a.vector_column, levels=a.levels, codes=a.codes, dim=a.dim,
                            quantizer=a.quantizer, collaborative_weight=a.collaborative_weight)
    except (ConfigError, DatasetError, ModelError, TrainingError, SemanticIdError, ValueError) as e:
        print(f"ptum cold-start: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("new_items", "users", "cold", "warm") if k in report}, indent=2))
    return 0


def _pipeline(a) -> int:
    _keras_backend_default()
    from pipelines.tfx_pipeline import PipelineConfig, PipelineInterrupted, run_local, summarize
    from ptum.config import ConfigError

    try:
        cfg = PipelineConfig.load(a.config)
    except ConfigError as e:
        print(f"ptum pipeline: error: {e}", file=sys.stderr)
        return 2
    if a.span is not None:
        cfg.span = a.span
    try:
        out = run_local(cfg)
    except PipelineInterrupted as e:
        print(f"ptum pipeline: {e}", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"ptum pipeline: the run stopped: {e}", file=sys.stderr)
        print(json.dumps(summarize(cfg), indent=2))
        return 3
    print(json.dumps(out, indent=2))
    return 0


def _demo(a, extra) -> int:
    """The whole pipeline on generated logs: generate -> TFX (ingest, validate, pre-train,
    evaluate, push, export embeddings) with LocalDagRunner and MLMD in SQLite."""
    _keras_backend_default()
    import yaml

    from pipelines.tfx_pipeline import PipelineConfig, run_local
    from ptum.data.generate import generate

    workdir = os.path.abspath(a.workdir)
    logs = os.path.join(workdir, "logs", "span-1")
    stats = generate(logs, users=a.users, items=a.items, seed=a.seed, malformed_rate=0.002)
    print(f"[1/2] generated {stats.events:,} events ({stats.malformed} malformed) for {stats.users:,} users in {logs}")
    config = {"pipeline_root": os.path.join(workdir, "pipeline"),
              "input_pattern": os.path.join(workdir, "logs", "span-{SPAN}", "events.csv"),
              "items_catalog": os.path.join(logs, "items.csv"),
              "serving_dir": os.path.join(workdir, "serving", "user_model"),
              "model_config": "demo",          # the preset shipped with the package
              "beam_args": ["--direct_running_mode=in_memory"] + list(extra),
              # A downstream task fine-tuned by a second Trainer: gender from users.csv.
              "finetune_tasks": [{"name": "gender", "task": "classify", "label_column": "gender",
                                  "labels": os.path.join(logs, "users.csv"),
                                  "config": {"epochs": 10, "patience": 4}}],
              # The evaluator blesses only if a linear probe of the user embeddings finds gender.
              "embedding_probe": {"labels": os.path.join(logs, "users.csv"), "label_column": "gender",
                                  "min_auc": 0.6}}
    config_path = os.path.join(workdir, "pipeline.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    print(f"[2/2] running the TFX pipeline ({config_path}); a few minutes on 2 cores")
    try:
        out = run_local(PipelineConfig.load(config_path))
    except RuntimeError as e:
        print(f"ptum demo: the pipeline stopped: {e}", file=sys.stderr)
        return 3
    cached = out.get("this_run", {}).get("cached", [])
    if cached:
        print(f"reused the results of an earlier run for {len(cached)} component(s) with unchanged inputs "
              f"({', '.join(cached[:6])}{' ...' if len(cached) > 6 else ''}); remove {workdir} to start over")
    metrics_path = os.path.join(out["evaluation"]["uri"], "metrics.json")
    with open(metrics_path) as f:
        evaluation = json.load(f)
    metrics, probe = evaluation["candidate"], evaluation.get("embedding_probe", {})
    print(f"next-item (valid split, history-filtered, full ranking): ndcg@10 {metrics['ndcg@10']:.4f}  "
          f"recall@10 {metrics['recall@10']:.4f}")
    if "auc" in probe:
        svd = next((v for k, v in probe.items() if k.startswith("tfidf_svd")), float("nan"))
        print(f"user-embedding probe ({probe['label_column']}, 5-fold LR on the frozen embeddings): "
              f"auc {probe['auc']:.4f} (item-bag SVD of the same size: {svd:.4f})")
    for name, ft in out.get("finetune", {}).items():
        if ft.get("metrics"):
            print(f"fine-tuned {name} (held-out users): auc {ft['metrics'].get('auc', float('nan')):.4f}  "
                  f"accuracy {ft['metrics'].get('accuracy', float('nan')):.4f}")
    where = {
        "pushed_model": out.get("pushed_model", {}).get("pushed_destination"),
        "embeddings": out.get("embeddings", {}).get("uri"),
        "validation_report": os.path.join(out["validation_report"]["uri"], "validation_report.txt"),
        "metrics": metrics_path,
        "finetuned_models": {k: v["uri"] for k, v in out.get("finetune", {}).items()},
        "mlmd": out["metadata"],
        "rerun": f"ptum pipeline run --config {config_path}",
    }
    print(json.dumps(where, indent=2))
    return 0
