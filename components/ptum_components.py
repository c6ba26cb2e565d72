"""Custom TFX components of the PTUM pipeline (Python function components).

  SequenceIngestion   raw logs (a window of spans) -> sequence dataset + TFX Examples
  ValidationGate      ExampleValidator anomalies + manifest thresholds -> stop or pass (report)
  (generative models: SemanticIdsGen and GenerativeTrainer in components/generative_components.py)
  NextItemEvaluator   next-item metrics vs the latest blessed model -> ModelBlessing
  VersionedPusher     blessed model -> <base>/<version>/ (atomic rename) -> PushedModel
  EmbeddingExport     pushed SavedModel + dataset -> Parquet user embeddings
"""
# No `from __future__ import annotations`: TFX reads these type hints at runtime.

import json
import os
import shutil
import time

from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.types.artifact_utils import encode_split_names

from components.dataset_trainer import DATASET_PROPERTY

DATASET_SUBDIR = "ptum"


class SequenceDataset(types.Artifact):
    """The tokenizer's output: sequences/, vocab/, deadletter/, manifest.json."""

    TYPE_NAME = "ptum.SequenceDataset"


class EmbeddingTable(types.Artifact):
    """Exported user embeddings (Parquet + manifest)."""

    TYPE_NAME = "ptum.EmbeddingTable"


class ValidationReport(types.Artifact):
    TYPE_NAME = "ptum.ValidationReport"


def _write_examples(dataset_dir: str, examples_uri: str) -> dict:
    """train -> Split-train, valid -> Split-eval TFRecords (gzip), one tf.Example per row."""
    import tensorflow as tf

    from ptum.data import contracts
    from ptum.data.features import sequence_examples

    ds = contracts.open_dataset(dataset_dir)
    counts = {}
    for split, name in (("train", "train"), ("valid", "eval")):
        out_dir = os.path.join(examples_uri, f"Split-{name}")
        os.makedirs(out_dir, exist_ok=True)
        n = 0
        with tf.io.TFRecordWriter(os.path.join(out_dir, "data_tfrecord-00000-of-00001.gz"),
                                  options="GZIP") as w:
            for batch in ds.read_split(split).to_batches(4096):
                for example in sequence_examples(batch):
                    w.write(example)
                n += batch.num_rows
        counts[name] = n
    return counts


def _vocab_source(baseline_model) -> tuple:
    """(dataset dir whose item vocabulary the blessed model was trained on, or None; why)."""
    if baseline_model is None:
        return None, "no blessed model from an earlier span: new vocabulary"
    meta_path = os.path.join(_model_dir(baseline_model), "metadata.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        src = meta["training_data"]["path"]
    except (OSError, KeyError, ValueError) as e:
        return None, f"blessed model {baseline_model.uri} has no readable training data record ({e}): new vocabulary"
    if not os.path.exists(os.path.join(src, "manifest.json")):
        return None, f"the blessed model's training data {src} is gone: new vocabulary"
    return src, f"reused from blessed model {baseline_model.uri} (vocab {meta.get('vocab_hash')})"


@component
def SequenceIngestion(  # noqa: N802 (TFX component names are classes)
        dataset: OutputArtifact[SequenceDataset],
        examples: OutputArtifact[standard_artifacts.Examples],
        input_format: Parameter[str],
        input_paths: Parameter[str] = "[]",
        input_pattern: Parameter[str] = "",
        span: Parameter[int] = -1,
        span_window: Parameter[int] = 1,
        baseline_model: InputArtifact[standard_artifacts.Model] = None,
        items_catalog: Parameter[str] = "",
        reuse_vocab: Parameter[int] = 1,
        vocab_rebuild_oov_rate: Parameter[float] = 0.05,
        beam_args: Parameter[str] = "[]",
        tokenize_options: Parameter[str] = "{}",
        stopped_reports: Parameter[str] = ""):
    """Tokenize a window of spans with the Beam job; emit the dataset and TFX Examples.

    The item vocabulary of the blessed model of an earlier span is reused (same token ids, so
    the model can warm-start and embeddings stay comparable; new items map to OOV) unless a
    rebuild is due: the share of this window's events whose item is out of that vocabulary
    exceeds `vocab_rebuild_oov_rate`, or `reuse_vocab` is 0.

    Inputs: `input_paths` (a JSON list, resolved when the pipeline was built: the local and
    Airflow runners, whose resolvers need the span then), or else `input_pattern` with its
    spans resolved here, at run time (`span` -1: the latest; Kubeflow V2 / Vertex)."""
    from ptum.data.ingest import plan, job
    from ptum.data.spans import window_files

    paths = json.loads(input_paths)
    if not paths:
        span, by_span, left_out = window_files(input_pattern, span if span >= 0 else None, span_window,
                                               stopped_reports)
        paths = [p for s in sorted(by_span) for p in by_span[s]]
        print(f"span {span}: {len(paths)} input file(s) matching {input_pattern}"
              f"{f'; spans {left_out} left out (stopped by validation)' if left_out else ''}", flush=True)

    output = os.path.join(dataset.uri, DATASET_SUBDIR)
    source, why = _vocab_source(baseline_model) if reuse_vocab else (None, "reuse_vocab is off: new vocabulary")

    def tokenize(vocab_from):
        opts = plan.TokenizeOptions(inputs=paths, format=input_format, output=output,
                                    items_catalog=items_catalog or None, vocab_from=vocab_from,
                                    **json.loads(tokenize_options))
        return job.run(opts, json.loads(beam_args))

    manifest = tokenize(source)
    oov, blessed_data = None, source     # the id checks compare with the blessed data even after a rebuild
    if source:
        c = manifest["counts"]
        oov = c["oov_events"] / max(c["events_accepted"], 1)
        if oov > vocab_rebuild_oov_rate:
            why = (f"rebuilt: {oov:.4f} of the events are out of the blessed model's vocabulary "
                   f"(rebuild above {vocab_rebuild_oov_rate})")
            source = None
            manifest = tokenize(None)
    print(f"vocabulary {manifest['vocab_hash']}: {why}", flush=True)
    counts = _write_examples(output, examples.uri)
    examples.split_names = encode_split_names(["train", "eval"])
    examples.span = span
    for art in (dataset, examples):
        art.set_string_custom_property("vocab_hash", manifest["vocab_hash"])
        art.set_int_custom_property("span", span)
        art.set_int_custom_property("vocab_reused", int(source is not None))
        art.set_string_custom_property("vocab_source", why)
    dataset.set_string_custom_property("counts", json.dumps(manifest["counts"]))
    dataset.set_string_custom_property("span_checks", json.dumps(
        _span_checks(manifest, output, input_pattern, span, span_window, paths, blessed_data, oov)))
    examples.set_string_custom_property("rows", json.dumps(counts))
    # The Trainers read rows from the Examples and the manifest and vocabulary from here
    # (components.dataset_trainer hands this path to their run_fn).
    examples.set_string_custom_property(DATASET_PROPERTY, output)


def _span_checks(manifest, output, pattern, span, window, paths, blessed_data, oov_vs_blessed) -> dict:
    """What the ValidationGate judges the newest span on: its own files' dead letters, how many
    spans the window held (drift compares like with like), and its id columns against the
    blessed model's dataset (when there is one)."""
    from ptum.data import contracts, checks
    from ptum.data.ingest import plan
    from ptum.data.spans import span_files

    if pattern and any(p in pattern for p in ("{SPAN}", "{YYYY}")):
        _, by_span = span_files(pattern, span, window)
        newest = {f for p in by_span.get(span, []) for f in plan.expand_paths(p)}
        read = {f for p in paths for f in plan.expand_paths(p)}     # spans the gate stopped are left out
        window_spans = sum(1 for files in by_span.values() if any(f in read for p in files
                                                                  for f in plan.expand_paths(p)))
    else:
        newest, window_spans = {f for p in paths for f in plan.expand_paths(p)}, 1
    files = [f for f in manifest.get("inputs_read", {}) if f in newest]
    out = {"window_spans": window_spans, "newest_span": checks.newest_span_counts(manifest, files), "ids": None}
    if blessed_data and oov_vs_blessed is not None:
        out["ids"] = checks.id_measures(contracts.open_dataset(output), contracts.open_dataset(blessed_data),
                                        oov_vs_blessed)
    return out


def _drift(statistics, baseline_statistics, schema, features, threshold) -> tuple:
    """TFDV drift (Jensen-Shannon divergence per feature, train split) of this span's statistics
    against the last validated earlier span's; returns (measurements, problems)."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.components.statistics_gen import stats_artifact_utils
    from tfx.utils import io_utils

    schema_proto = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema.uri))
    for f in schema_proto.feature:
        if f.name in features:
            f.drift_comparator.jensen_shannon_divergence.threshold = threshold
    cur = stats_artifact_utils.load_statistics(statistics, "train").proto()
    prev = stats_artifact_utils.load_statistics(baseline_statistics, "train").proto()
    a = tfdv.validate_statistics(cur, schema_proto, previous_statistics=prev)
    measured = {}
    for info in a.drift_skew_info:
        name = ".".join(info.path.step)
        for m in info.drift_measurements:
            measured[name] = {"jensen_shannon_divergence": round(m.value, 6), "threshold": m.threshold}
    problems = []
    for feature, info in a.anomaly_info.items():
        kinds = [anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason]
        if any(k.startswith("COMPARATOR_") for k in kinds):
            problems.append({"kind": "drift", "feature": feature, "against_span": baseline_statistics.span,
                             "description": info.description or info.short_description,
                             **measured.get(feature, {})})
    return measured, problems


@component
def ValidationGate(  # noqa: N802
        anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
        statistics: InputArtifact[standard_artifacts.ExampleStatistics],
        schema: InputArtifact[standard_artifacts.Schema],
        dataset: InputArtifact[SequenceDataset],
        report: OutputArtifact[ValidationReport],
        baseline_statistics: InputArtifact[standard_artifacts.ExampleStatistics] = None,
        baseline_report: InputArtifact[ValidationReport] = None,
        max_deadletter_rate: Parameter[float] = 0.05,
        max_oov_rate: Parameter[float] = 0.2,
        max_drift: Parameter[float] = 0.3,
        drift_features: Parameter[str] = '["item_ids", "behavior_ids", "length"]',
        min_item_overlap: Parameter[float] = 0.5,
        max_id_crossing: Parameter[float] = 0.2,
        max_id_ratio_change: Parameter[float] = 3.0,
        report_dir: Parameter[str] = ""):
    """Stops the run (raises) when the newest span is not fit to train on: schema anomalies; its
    own files' dead-letter rate (not the window's average) or the window's OOV rate past its
    threshold; id columns that do not match the blessed model's data (ptum.data.checks:
    swapped or shifted columns); drift against the last validated earlier span past `max_drift`
    (0 turns drift off), measured only when both sides read as many spans (like with like).
    Writes a readable report (also to `report_dir`: TFX removes the outputs of a failed
    execution)."""
    from ptum.data import checks, contracts

    manifest = contracts.open_dataset(os.path.join(dataset.uri, DATASET_SUBDIR)).manifest
    c = manifest["counts"]
    span_checks = json.loads(dataset.get_string_custom_property("span_checks") or "{}")
    newest = span_checks.get("newest_span") or {
        "files": len(manifest.get("inputs_read", {})), "events_read": c["events_read"],
        "dead_lettered": c["events_dead_lettered"]["total"],
        "rate": c["events_dead_lettered"]["total"] / max(c["events_read"], 1)}
    dl_rate = newest["rate"]
    oov_rate = c["oov_events"] / max(c["events_accepted"], 1)
    problems = checks.judge(newest, span_checks.get("ids"), max_deadletter_rate, min_item_overlap,
                            max_id_crossing, max_id_ratio_change)
    for p in problems:
        if p["kind"] == "dead_letters":
            p["by_reason_in_window"] = {k: v for k, v in c["events_dead_lettered"]["by_reason"].items() if v}
    if oov_rate > max_oov_rate:
        problems.append({"kind": "oov", "rate": oov_rate, "threshold": max_oov_rate})
    problems += _schema_problems(anomalies)
    window_spans = int(span_checks.get("window_spans", 1))
    drift, drift_problems = _drift_check(statistics, baseline_statistics, baseline_report, schema, window_spans,
                                         json.loads(drift_features), max_drift)
    problems += drift_problems
    span = dataset.get_int_custom_property("span")
    text = {"passed": not problems, "problems": problems, "deadletter_rate": dl_rate, "oov_rate": oov_rate,
            "newest_span": newest, "window_spans": window_spans, "id_columns": span_checks.get("ids"),
            "drift": drift, "counts": c, "dataset": dataset.uri, "span": span,
            "vocabulary": dataset.get_string_custom_property("vocab_source")}
    lines = _report_lines(text, newest, max_deadletter_rate, max_oov_rate, min_item_overlap, max_drift)
    folder, stem = _write_report(report.uri, report_dir, span, text, lines)
    report.set_int_custom_property("passed", int(not problems))
    report.set_int_custom_property("span", span)
    report.set_int_custom_property("statistics_id", statistics.id)
    report.set_int_custom_property("window_spans", window_spans)
    if problems:
        raise RuntimeError("data validation failed; the run stops before training:\n" + "\n".join(lines) +
                           f"\nreport: {os.path.join(folder, stem + '.txt')}")


def _schema_problems(anomalies) -> list:
    """TFDV's schema anomalies of the train and eval splits, one problem per feature."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    problems = []
    for split in ("train", "eval"):
        path = os.path.join(anomalies.uri, f"Split-{split}", "SchemaDiff.pb")
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            a = anomalies_pb2.Anomalies.FromString(f.read())
        for feature, info in a.anomaly_info.items():
            problems.append({"kind": "schema", "split": split, "feature": feature,
                             "description": info.description or info.short_description})
    return problems


def _drift_check(statistics, baseline_statistics, baseline_report, schema, window_spans: int, features,
                 max_drift: float):
    """(what was measured, problems): drift against the last validated span, only like with
    like (both windows read as many spans); max_drift 0 turns it off."""
    drift = {"checked": False}
    baseline_spans = None
    if baseline_report is not None and "window_spans" in baseline_report.mlmd_artifact.custom_properties:
        baseline_spans = baseline_report.get_int_custom_property("window_spans")
    if baseline_spans is not None and baseline_spans != window_spans and max_drift > 0:
        drift["why_not"] = (f"not like with like: the baseline's window held {baseline_spans} span(s), this "
                            f"run's {window_spans}")
    elif baseline_statistics is not None and max_drift > 0:
        measured, problems = _drift(statistics, baseline_statistics, schema, features, max_drift)
        return {"checked": True, "against_span": baseline_statistics.span, "threshold": max_drift,
                "features": measured}, problems
    elif max_drift > 0:
        drift["why_not"] = "no validated earlier span"
    return drift, []


def _report_lines(text: dict, newest: dict, max_deadletter_rate: float, max_oov_rate: float,
                  min_item_overlap: float, max_drift: float) -> list:
    """The validation report a person reads (validation_report.txt)."""
    lines = [f"validation {'passed' if text['passed'] else 'FAILED'} for span {text['span']} ({text['dataset']})",
             f"  newest span's dead-letter rate {text['deadletter_rate']:.4f} (max {max_deadletter_rate}; {newest['files']} file(s)), "
             f"OOV rate {text['oov_rate']:.4f} (max {max_oov_rate})",
             f"  vocabulary: {text['vocabulary']}"]
    if text["id_columns"]:
        ids = text["id_columns"]
        lines.append(f"  id columns vs the blessed model's data: items known {ids['item_overlap']:.3f} "
                     f"(min {min_item_overlap}), user ids that are its items {ids['users_known_as_items']:.3f} / "
                     f"its users {ids['users_known_as_users']:.3f}, items per user {ids['items_per_user']:.3f} "
                     f"(blessed {ids['blessed_items_per_user']:.3f})")
    if text["drift"].get("why_not"):
        lines.append(f"  drift not measured: {text['drift']['why_not']}")
    if text["drift"]["checked"]:
        lines.append(f"  drift vs span {text['drift']['against_span']} (Jensen-Shannon, max {max_drift}): " +
                     ", ".join(f"{k} {v['jensen_shannon_divergence']:.4f}" for k, v in sorted(text["drift"]["features"].items())))
    lines += [f"  - {p['kind']}: {p['reason']}" if "reason" in p else f"  - {json.dumps(p)}" for p in text["problems"]]
    return lines


def _write_report(uri: str, report_dir: str, span: int, text: dict, lines: list):
    """The report as JSON and text into the artifact and, when set, `report_dir` (TFX removes
    the outputs of a failed execution); returns (folder, stem) of the last copy."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    targets = [(uri, "validation_report")]
    if report_dir:
        targets.append((report_dir, f"span-{span}-{stamp}"))
    for folder, stem in targets:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, stem + ".json"), "w") as f:
            json.dump(text, f, indent=2)
        with open(os.path.join(folder, stem + ".txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return targets[-1]


def _model_dir(model_artifact) -> str:
    return os.path.join(model_artifact.uri, "Format-Serving", "ptum_model")


@component
def NextItemEvaluator(  # noqa: N802
        model: InputArtifact[standard_artifacts.Model],
        dataset: InputArtifact[SequenceDataset],
        evaluation: OutputArtifact[standard_artifacts.ModelEvaluation],
        blessing: OutputArtifact[standard_artifacts.ModelBlessing],
        baseline_model: InputArtifact[standard_artifacts.Model] = None,
        min_ndcg_at_10: Parameter[float] = 0.0,
        max_regression: Parameter[float] = 0.0,
        probe_labels: Parameter[str] = "",
        probe_label_column: Parameter[str] = "",
        min_probe_auc: Parameter[float] = 0.0):
    """Next-item metrics on the eval (valid) split; blesses only if the absolute threshold
    holds and the model is not worse than the latest blessed one. Also reports how much
    users' nearest neighbours move between the baseline's and this model's embeddings.
    With `probe_labels`: a linear probe of the user embeddings for `probe_label_column`
    (5-fold, with the item-bag SVD baseline); not blessed below `min_probe_auc`."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from ptum.data import contracts
    from ptum.evaluation.ranking import NonFiniteScores, evaluate_model

    data_dir = os.path.join(dataset.uri, DATASET_SUBDIR)
    ds = contracts.open_dataset(data_dir)
    reasons = []
    try:
        cur = evaluate_model(_model_dir(model), data_dir, "valid")
    except NonFiniteScores as e:
        # A broken model is never blessed (NaN scores would otherwise rank every target first).
        cur = {"error": str(e), "ndcg@10": float("nan")}
        reasons.append(f"evaluation failed: {e}")
        baseline_model = None
    result = {"candidate": cur, "thresholds": {"min_ndcg_at_10": min_ndcg_at_10, "max_regression": max_regression}}
    if not reasons and cur["ndcg@10"] < min_ndcg_at_10:
        reasons.append(f"ndcg@10 {cur['ndcg@10']:.4f} < threshold {min_ndcg_at_10}")
    if probe_labels and not reasons:
        from ptum.evaluation.embeddings import EmbeddingEvalError, probe_model
        result["thresholds"]["min_probe_auc"] = min_probe_auc
        try:
            probe = probe_model(_model_dir(model), data_dir, probe_labels, probe_label_column)
            result["embedding_probe"] = probe
            if probe["auc"] < min_probe_auc:
                reasons.append(f"embedding probe AUC ({probe_label_column}) {probe['auc']:.4f} < threshold "
                               f"{min_probe_auc}")
        except EmbeddingEvalError as e:
            result["embedding_probe"] = {"error": str(e)}
            reasons.append(f"embedding probe failed: {e}")
    if baseline_model is not None:
        import json as _json
        with open(os.path.join(_model_dir(baseline_model), "metadata.json")) as f:
            base_meta = _json.load(f)
        if base_meta["vocab_hash"] == ds.vocab_hash:
            base = evaluate_model(_model_dir(baseline_model), data_dir, "valid")
            result["baseline"] = base
            if cur["ndcg@10"] < base["ndcg@10"] - max_regression:
                reasons.append(f"ndcg@10 {cur['ndcg@10']:.4f} < blessed model's {base['ndcg@10']:.4f} "
                               f"- {max_regression}")
            if _user_encoder(_model_dir(baseline_model)) and _user_encoder(_model_dir(model)):
                result["embedding_stability"] = _neighbour_overlap(_model_dir(baseline_model), _model_dir(model), ds)
        else:
            result["baseline"] = {"skipped": "the blessed model has another vocabulary"}
    blessed = not reasons
    result["blessed"] = blessed
    result["reasons"] = reasons
    os.makedirs(evaluation.uri, exist_ok=True)
    with open(os.path.join(evaluation.uri, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    blessing.set_int_custom_property("blessed", int(blessed))
    name = "BLESSED" if blessed else "NOT_BLESSED"
    with open(os.path.join(blessing.uri, name), "w") as f:
        f.write("\n".join(reasons))
    blessing.set_int_custom_property("span", dataset.get_int_custom_property("span"))
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    if baseline_model is not None:
        blessing.set_string_custom_property("baseline_model", baseline_model.uri)
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
    evaluation.set_string_custom_property("ndcg_at_10", f"{cur['ndcg@10']:.6f}")
    if "auc" in result.get("embedding_probe", {}):
        evaluation.set_string_custom_property("embedding_probe_auc", f"{result['embedding_probe']['auc']:.6f}")


def _user_encoder(model_dir: str) -> bool:
    """Whether the model folder holds a user encoder (not a generative retrieval model)."""
    from ptum.model.saving import GENERATIVE_MODEL

    with open(os.path.join(model_dir, "metadata.json")) as f:
        return json.load(f).get("model") != GENERATIVE_MODEL


def _neighbour_overlap(base_dir: str, cur_dir: str, ds, k: int = 10, max_users: int = 2000) -> dict:
    """Mean overlap of each user's k nearest users (cosine) under the two models."""
    import keras
    import numpy as np

    from ptum.data.batches import Rows, user_batches
    from ptum.model.saving import load_model_dir

    rows = Rows.from_split(ds, "valid")
    idx_all = np.arange(min(len(rows), max_users))
    embs = []
    for d in (base_dir, cur_dir):
        enc, meta, _ = load_model_dir(d)
        out = np.zeros((len(rows), meta["user_embedding"]["dim"]), np.float32)
        for idx, batch in user_batches(rows, 256, meta["max_len"], meta["length_buckets"], meta["time_buckets"]):
            out[idx] = keras.ops.convert_to_numpy(enc.user_embedding(batch))
        e = out[idx_all]
        embs.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-9))
    k = min(k, len(idx_all) - 1)
    if k < 1:
        return {"users": int(len(idx_all)), "knn_overlap": None}
    nn = []
    for e in embs:
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        nn.append(np.argpartition(-sim, k, axis=1)[:, :k])
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(nn[0], nn[1])])
    return {"users": int(len(idx_all)), "k": k, "knn_overlap": float(overlap)}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


@component
def VersionedPusher(  # noqa: N802
        model: InputArtifact[standard_artifacts.Model],
        model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
        pushed_model: OutputArtifact[standard_artifacts.PushedModel],
        base_directory: Parameter[str]):
    """Copies a blessed model's SavedModel to <base>/<version>/ (TF Serving's layout): the
    version is written beside and renamed into place, so it appears whole or not at all."""
    if not model_blessing.get_int_custom_property("blessed"):
        pushed_model.set_int_custom_property("pushed", 0)
        return
    from ptum.data import contracts
    from ptum.serving.saved_model import verify_saved_model

    src = os.path.join(model.uri, "Format-Serving", "saved_model")
    digest = verify_saved_model(src)["saved_model_sha256"]  # the Trainer's export, unmodified
    # One pusher at a time per serving folder (two pipelines pushing at once would pick the
    # same version and rename over each other): the other waits its turn.
    with contracts.output_lock(base_directory, "VersionedPusher", RuntimeError, wait=True):
        version, already = _push_version(model.uri, src, base_directory)
    if already:
        # Re-running a span re-blesses the same model: it is served already, no new version.
        pushed_model.set_int_custom_property("already_pushed", 1)
    dest = os.path.join(base_directory, str(version))
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_destination", dest)
    pushed_model.set_int_custom_property("pushed_version", version)
    pushed_model.set_string_custom_property("pushed_model", model.uri)
    pushed_model.set_int_custom_property("pushed_model_id", model.id)
    # The trust anchor for loaders: MLMD's record of what was pushed.
    pushed_model.set_string_custom_property("saved_model_sha256", digest)


def _push_version(model_uri: str, src: str, base_directory: str):
    """(version serving `model_uri` under `base_directory`, whether it was there already): the
    existing one, or a new one copied beside and renamed into place. Call with the folder's
    lock held."""
    from ptum.model.saving import model_version
    from ptum.serving.saved_model import PUSHED_FROM_ASSET, read_export_metadata, stamp_version

    os.makedirs(base_directory, exist_ok=True)
    existing = sorted(int(v) for v in os.listdir(base_directory) if v.isdigit())
    marker = os.path.join("assets.extra", PUSHED_FROM_ASSET)
    same = [v for v in existing if _read(os.path.join(base_directory, str(v), marker)) == model_uri]
    if same:
        return same[-1], True
    # The model's own version (as export-model gives it), unless a higher one is served already:
    # TF Serving serves the highest, so a push is never hidden behind an earlier one.
    version = max([model_version(read_export_metadata(src))] + [v + 1 for v in existing])
    tmp = os.path.join(base_directory, f".tmp-{version}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    with open(os.path.join(tmp, marker), "w") as f:
        f.write(model_uri)
    stamp_version(tmp, version)  # one version: the directory's, in the metadata too
    os.replace(tmp, os.path.join(base_directory, str(version)))
    return version, False


@component
def EmbeddingExport(  # noqa: N802
        pushed_model: InputArtifact[standard_artifacts.PushedModel],
        dataset: InputArtifact[SequenceDataset],
        embeddings: OutputArtifact[EmbeddingTable],
        beam_args: Parameter[str] = "[]"):
    """User embeddings of every user of the dataset from the model just pushed."""
    if not pushed_model.get_int_custom_property("pushed"):
        embeddings.set_int_custom_property("exported", 0)
        return
    from ptum.serving.export_embeddings import run

    manifest = run(pushed_model.get_string_custom_property("pushed_destination"),
                   os.path.join(dataset.uri, DATASET_SUBDIR), embeddings.uri, beam_args=json.loads(beam_args),
                   expected_sha256=pushed_model.get_string_custom_property("saved_model_sha256"))
    embeddings.set_int_custom_property("exported", 1)
    embeddings.set_int_custom_property("users", manifest["counts"]["users"])
    embeddings.set_string_custom_property("model_version", manifest["model_version"])
