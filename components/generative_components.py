"""TFX components of a pipeline whose model config is generative (model.architecture generative):

  SemanticIdsGen      dataset (+ its item catalog) -> Semantic IDs artifact (ptum.SemanticIds)
  GenerativeTrainer   dataset (+ Semantic IDs) -> generative retrieval model, in the layout of
                      the Trainer's Model (the PTUM model is trained by TFX's stock Trainer)
"""
# No `from __future__ import annotations`: TFX reads these type hints at runtime.

import json
import os

from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.ptum_components import DATASET_SUBDIR, SequenceDataset


class SemanticIds(types.Artifact):
    """`ptum semantic-ids`' artifact: codes.parquet, codebooks, dead letters, report, manifest."""

    TYPE_NAME = "ptum.SemanticIds"


SEMANTIC_ID_OPTIONS = ("attributes", "vectors", "vector_column", "levels", "codes", "dim", "seed", "quantizer",
                       "rqvae_epochs", "collaborative_weight")
# Read by the pipeline, not by SemanticIdsGen: an id model (a PTUM config: preset or YAML, and its
# overrides) trained on the same window, whose item embeddings join the content vectors.
ID_MODEL_OPTIONS = ("id_model", "id_model_overrides")


@component
def SemanticIdsGen(  # noqa: N802
        dataset: InputArtifact[SequenceDataset],
        semantic_ids: OutputArtifact[SemanticIds],
        options: Parameter[str] = "{}",
        id_model: InputArtifact[standard_artifacts.Model] = None):
    """Semantic IDs for the items of this window's vocabulary, from their content (the item
    catalog the ingestion read; `options` JSON: the `ptum semantic-ids` flags, see
    SEMANTIC_ID_OPTIONS), joined with the item embeddings of `id_model` (a PTUM model the
    pipeline's IdModelTrainer trained on the same dataset; `ptum semantic-ids --model`) when
    given. The artifact is `ptum semantic-ids`' folder, unchanged."""
    from ptum.training.semantic_ids import learn_semantic_ids

    opts = json.loads(options)
    unknown = sorted(set(opts) - set(SEMANTIC_ID_OPTIONS))
    if unknown:
        raise ValueError(f"semantic_ids options: unknown key(s) {unknown}; known: {list(SEMANTIC_ID_OPTIONS)}")
    if opts.get("quantizer") == "rqvae":
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if id_model is not None:
        opts["model"] = os.path.join(id_model.uri, "Format-Serving", "ptum_model")
    elif "collaborative_weight" in opts:
        raise ValueError("semantic_ids options: collaborative_weight weighs an id model's item embeddings, and no "
                         "id model was given (semantic_ids.id_model)")
    out = os.path.join(semantic_ids.uri, "semantic_ids")
    manifest = learn_semantic_ids(os.path.join(dataset.uri, DATASET_SUBDIR), out, **opts)
    semantic_ids.set_string_custom_property("path", out)
    semantic_ids.set_string_custom_property("vocab_hash", manifest["dataset"]["vocab_hash"])
    semantic_ids.set_int_custom_property("items_coded", manifest["counts"]["items_coded"])
    semantic_ids.set_int_custom_property("items_dead_lettered", manifest["counts"]["items_dead_lettered"])
    semantic_ids.set_string_custom_property("collision_rate", f"{manifest['report']['collision_rate']:.6f}")
    semantic_ids.set_int_custom_property("span", dataset.get_int_custom_property("span"))


@component
def GenerativeTrainer(  # noqa: N802
        dataset: InputArtifact[SequenceDataset],
        model: OutputArtifact[standard_artifacts.Model],
        model_run: OutputArtifact[standard_artifacts.ModelRun],
        ptum_config: Parameter[str],
        semantic_ids: InputArtifact[SemanticIds] = None):
    """The generative retrieval model (model.architecture generative) with `ptum pretrain`'s
    training (pretrain_rows: checkpoints and resume, early stopping on the validation beam
    search), on the dataset's train and valid rows; codes from `semantic_ids` when
    generative.codes is semantic. The same layout as the Trainer's model: Format-Serving/
    ptum_model/ and Format-Serving/saved_model/ (top_k over generated items); checkpoints
    and logs in the ModelRun."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from ptum.config import PTUMConfig
    from ptum.data import contracts
    from ptum.data.batches import Rows
    from components.trainer_module import export_beside
    from ptum.training.pretrain import pretrain_rows

    cfg = PTUMConfig.from_dict(json.loads(ptum_config))
    if cfg.generative.codes == "semantic":
        if semantic_ids is None:
            raise ValueError("GenerativeTrainer: generative.codes is semantic but no Semantic IDs artifact was given")
        cfg.generative.semantic_ids = semantic_ids.get_string_custom_property("path")
    data_dir = os.path.join(dataset.uri, DATASET_SUBDIR)
    ds = contracts.open_dataset(data_dir)
    serving = os.path.join(model.uri, "Format-Serving")
    model_dir = os.path.join(serving, "ptum_model")
    pretrain_rows(ds, Rows.from_split(ds, "train"), Rows.from_split(ds, "valid"), model_dir, cfg, log=print,
                  run_dir=model_run.uri)
    export_beside(model_dir, serving, model_run.uri)
