"""Model folders: the one place that writes Keras files atomically and loads a finished
pre-trained model (encoder, metadata, config).

Model directory layout (`metadata.json` is written last: it marks the model finished;
loaders refuse a directory without it):
  encoder.keras            the UserEncoder (Keras native format), best validation weights; for
                           model.architecture generative the whole GenerativeRetrieval model
                           (metadata "model": GENERATIVE_MODEL)
  config.json              the PTUMConfig used (model sizes filled from the dataset)
  metadata.json            vocab hash, which vector is the user embedding, metrics, data fingerprint, stack
  history.json             per-epoch losses and validation metrics
  vocab/                   the dataset's vocabulary files (for serving-time lookup)
  checkpoints/             latest training state (pretrainer + optimizer + RNG) and state.json
  tensorboard/             TensorBoard logs
"""
from __future__ import annotations

import json
import os

from ptum.config import PTUMConfig

METADATA = "metadata.json"
ENCODER_FILE = "encoder.keras"
GENERATIVE_MODEL = "ptum-generative-retrieval"


def atomic_save_keras(model, path: str) -> None:
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


class ModelError(Exception):
    pass


def file_digests(folder: str, rels) -> dict:
    """{relative path: sha256 of its bytes} (what metadata.json records as files_sha256)."""
    import hashlib

    out = {}
    for rel in sorted(rels):
        h = hashlib.sha256()
        with open(os.path.join(folder, rel), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[rel] = h.hexdigest()
    return out


def verify_model_files(path: str, metadata: dict) -> None:
    """The files a model's metadata records digests of (encoder, config, vocabularies) must
    match them: a vocabulary replaced in the folder (another tokenize's) is refused."""
    recorded = metadata.get("files_sha256")
    if not recorded:
        return   # a model from before digests were recorded
    missing = [rel for rel in recorded if not os.path.exists(os.path.join(path, rel))]
    if missing:
        raise ModelError(f"{path}: {missing[0]} is missing; the model folder is damaged: train it again")
    actual = file_digests(path, recorded)
    changed = [rel for rel in recorded if actual[rel] != recorded[rel]]
    if changed:
        raise ModelError(f"{path}: {', '.join(changed)} changed after training (digest differs from "
                         "metadata.json); the model folder was modified: train it again")


def load_model_dir(path: str, generative: bool = False):
    """(encoder, metadata, config) of a finished model directory. A generative retrieval model
    (ptum.model.generative) is refused unless `generative` (it has no user encoder)."""
    import keras
    import ptum.model.encoder  # noqa: F401  (registers the serializable classes)
    import ptum.model.generative  # noqa: F401

    meta_path = os.path.join(path, METADATA)
    if not os.path.exists(meta_path):
        raise ModelError(f"{path}: no {METADATA}: not a finished model (training failed, was killed or is running)")
    try:
        with open(meta_path) as f:
            metadata = json.load(f)
        with open(os.path.join(path, "config.json")) as f:
            cfg = PTUMConfig.from_dict(json.load(f))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable model metadata ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if metadata.get("model") == GENERATIVE_MODEL and not generative:
        raise ModelError(f"{path}: a generative retrieval model (model.architecture generative) has no user "
                         "encoder or embedding; ptum evaluate scores it")
    verify_model_files(path, metadata)
    try:
        encoder = keras.saving.load_model(os.path.join(path, ENCODER_FILE), compile=False)
    except (ValueError, TypeError, OSError, KeyError) as e:
        # Keras' safe mode refuses Python lambdas / unknown code in a .keras file: never run it.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{os.path.join(path, ENCODER_FILE)}: cannot load the model ({first})") from None
    return encoder, metadata, cfg


def model_version(metadata: dict) -> int:
    """The serving version of a trained model: the epoch second its training finished
    (metadata.json's `created`, UTC). `ptum export-model`, `ptum export-embeddings` and the
    pipeline's pusher all give one model this one version, and a model trained later a higher
    one (TF Serving serves the highest). Folders without the field get the current time."""
    import calendar
    import time

    try:
        return int(calendar.timegm(time.strptime(metadata["created"], "%Y-%m-%dT%H:%M:%SZ")))
    except (KeyError, TypeError, ValueError):
        return int(time.time())
