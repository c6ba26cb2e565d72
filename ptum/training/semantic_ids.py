"""`ptum semantic-ids`: a dataset's items -> Semantic IDs, written as a versioned artifact.

    <output>/codes.parquet      item_id, token_id, codes (L levels + the collision token), source
    <output>/codebooks.parquet  level, code, vector (the residual codebooks)
    <output>/deadletter.parquet items that got no code, with the reason
    <output>/report.json, report.md, codebook_usage.png
    <output>/manifest.json      last: counts, parameters, the dataset's vocab hash, file digests

Each item's vector comes from its content (ptum.data.item_content). With a pre-trained model
(`model`), its item embedding (l2-normalised, times `collaborative_weight`) is joined to the
content vector, so items with the same content are told apart by behaviour (source
"content+collaborative"); an item without content then gets its content block predicted from
its item embedding by a ridge regression learned on the items that have both (source
"collaborative"). Without a model, an item without content is a dead letter with its reason. The folder is
replaced in one step (a failed run leaves the previous artifact as it was).

New items (`new_items`: token ids of items that had no events, e.g. those a cold-start
evaluation holds out of training) take no part in learning the codebooks: they get the nearest
codes of the codebooks learned on the rest, from their content alone (with a model, their
collaborative block is predicted from their content by a ridge map learned on the other items),
and the next free collision token (source "content_new_item"). With the RQ-VAE, the encoder
trained on the others maps them into its latent space first. The catalog's items without a
token (no events, or fewer than the vocabulary's min count) are new items too (source
"content_catalog_only"; token ids after the vocabulary, contracts.catalog_only_items): a
generative model trained with `generative.catalog_items` can return them from the first day.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from ptum import fs
from ptum.data import contracts
from ptum.data.item_content import ContentError, item_content
from ptum.model.semantic_ids import (Quantized, assign_codes, dedup_fitted_first, quantizer_report,
                                     residual_kmeans)

CODES_FILE, CODEBOOKS_FILE, DEADLETTER_FILE = "codes.parquet", "codebooks.parquet", "deadletter.parquet"
KIND = "semantic_ids"


class SemanticIdError(ValueError):
    """Semantic IDs cannot be learned or read (bad inputs, nothing to quantize, damaged artifact)."""


def collaborative_vectors(model_dir: str, ds: contracts.SequenceDataset, tokens: np.ndarray) -> np.ndarray:
    """The pre-trained model's item encodings of `tokens` (same vocabulary required)."""
    import keras

    from ptum.model.saving import load_model_dir

    encoder, meta, _ = load_model_dir(model_dir)
    if meta.get("vocab_hash") != ds.vocab_hash:
        raise SemanticIdError(f"--model {model_dir}: trained on vocabulary {meta.get('vocab_hash')}, the dataset "
                              f"has {ds.vocab_hash}")
    table = np.asarray(keras.ops.convert_to_numpy(encoder.item_table(training=False)), np.float64)
    return table[tokens]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def ridge_map(src: np.ndarray, dst: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """W minimising |src W - dst|^2 + alpha |W|^2."""
    a = src.T @ src + alpha * np.eye(src.shape[1])
    return np.linalg.solve(a, src.T @ dst)


def learn_semantic_ids(data: str, output: str, *, attributes: Optional[str] = None, vectors: Optional[str] = None,
                       vector_column: str = "vector", model: Optional[str] = None, collaborative_weight: float = 1.0,
                       levels: int = 3, codes: int = 256, dim: int = 64, seed: int = 0,
                       quantizer: str = "kmeans", rqvae_epochs: int = 100,
                       new_items: Optional[Sequence[int]] = None, log: Callable[[str], None] = print) -> dict:
    """Learn and write the artifact; returns its manifest. `quantizer`: kmeans (residual k-means
    on the item vectors) or rqvae (ptum.model.rqvae: residual quantization of a learned latent).
    `new_items`: item tokens coded from content by the codebooks of the others (module doc)."""
    if levels < 1 or codes < 2 or dim < 2:
        raise SemanticIdError(f"levels {levels}, codes {codes}, dim {dim}: need levels >= 1, codes >= 2, dim >= 2")
    if quantizer not in ("kmeans", "rqvae") or rqvae_epochs < 1:
        raise SemanticIdError(f"--quantizer {quantizer} (kmeans | rqvae), --rqvae-epochs {rqvae_epochs} (>= 1)")
    ds = contracts.open_dataset(data)
    contracts.check_output_kind(output, KIND, SemanticIdError)
    try:
        content = item_content(ds, attributes, vectors, vector_column, dim=dim, seed=seed, catalog_only=True)
    except ContentError as e:
        raise SemanticIdError(str(e)) from None
    x, has = content.vectors.astype(np.float64), content.has_content.copy()
    source = np.array(["content" if h else "" for h in has], dtype=object)
    catalog = content.token_ids >= ds.num_item_tokens      # catalog items without events: new too
    new = np.isin(content.token_ids, np.asarray(list(new_items) if new_items is not None else [], np.int64))
    new |= catalog
    if model:
        seen_vectors = collaborative_vectors(model, ds, content.token_ids[~catalog])
        collab = np.zeros((len(content.token_ids), seen_vectors.shape[1]))
        collab[~catalog] = _unit_rows(seen_vectors)
        x, has = _join_collaborative(x, has, new, source, collab, collaborative_weight)
    source[new & has] = "content_new_item"
    source[catalog & has] = "content_catalog_only"
    if not has.any() or x.shape[1] == 0:
        raise SemanticIdError(f"{data}: no item has content (a catalog with titles or categories, --attributes or "
                              "--vectors) to learn Semantic IDs from")
    log(f"semantic ids: {int(has.sum()):,} of {len(has):,} items with a vector "
        f"({', '.join(content.sources) or 'none'}{', collaborative' if (source == 'collaborative').any() else ''}); "
        f"{'residual k-means' if quantizer == 'kmeans' else 'RQ-VAE'} {levels} x {codes}")
    fit = has & ~new
    if not fit.any():
        raise SemanticIdError(f"{data}: every item with content is a new item; nothing to learn codebooks from")
    fitted = fit[has]                 # of the rows quantized (every item with a vector)
    if quantizer == "rqvae":
        from ptum.model.rqvae import train_rqvae

        q, latent, rq_info = train_rqvae(x[has], levels=levels, codes=codes, epochs=rqvae_epochs, seed=seed,
                                         fit=fitted)
        report = {**quantizer_report(latent[fitted], Quantized(q.codebooks, q.codes[fitted], q.dedup[fitted],
                                                                q.restarts)),
                  "space": "RQ-VAE latent", "rqvae": rq_info}
    else:
        q = residual_kmeans(x[fit], levels=levels, codes=codes, seed=seed)
        report = {**quantizer_report(x[fit], q), "space": "item vectors"}
        if not fitted.all():
            # New items: the nearest codes of these codebooks, the next free collision tokens.
            all_codes = np.zeros((len(fitted), levels), np.int64)
            all_codes[fitted], all_codes[~fitted] = q.codes, assign_codes(q.codebooks, x[has & new])
            q = Quantized(q.codebooks, all_codes, dedup_fitted_first(all_codes, fitted), q.restarts)
    if not fitted.all():
        known = {tuple(t) for t in q.codes[fitted].tolist()}
        report["new_items"] = {"items": int((~fitted).sum()), "sharing_a_fitted_tuple":
                               int(sum(tuple(t) in known for t in q.codes[~fitted].tolist()))}
        report["dedup_tokens"] = int(q.dedup.max()) + 1
    report.update(quantizer=quantizer, sources=content.sources, counts=content.counts)
    with contracts.output_lock(output, "ptum semantic-ids", SemanticIdError), fs.staged_dir(output) as stage:
        manifest = _write(stage, ds, content, has, source, q, report,
                          {"levels": levels, "codes": codes, "dim": dim, "seed": seed,
                           "quantizer": "residual-kmeans" if quantizer == "kmeans" else "rqvae",
                           "rqvae_epochs": rqvae_epochs if quantizer == "rqvae" else None,
                           "attributes": attributes, "vectors": vectors, "vector_column": vector_column,
                           "model": model, "collaborative_weight": collaborative_weight if model else None,
                           "new_items": int((new & ~catalog).sum()), "catalog_only_items": int(catalog.sum())})
    used = ", ".join(f"{lv['utilisation']:.2f}" for lv in report["levels"])
    log(f"semantic ids written to {output}: collision rate {report['collision_rate']:.4f}, utilisation {used}")
    return manifest


def _join_collaborative(x, has, new, source, collab, weight: float):
    """(item vectors, which items have one) with a pre-trained model's item embeddings `collab`
    (unit rows): `source` is updated in place."""
    seen = has & ~new
    if new.any() and seen.sum() >= 2 and x.shape[1]:
        # A new item has no behaviour yet: its collaborative block predicted from its content.
        collab[new & has] = _unit_rows(x[new & has] @ ridge_map(x[seen], collab[seen]))
        collab[new & ~has] = 0.0
    bare = ~has & ~new
    if bare.any() and seen.sum() >= 2 and x.shape[1]:
        # Items without content: their content block predicted from their item embedding.
        x[bare] = collab[bare] @ ridge_map(collab[seen], x[seen])
        source[bare] = "collaborative"
        has = has | bare
    if weight > 0:
        # Items with the same content (the same attribute set) are told apart by behaviour.
        x = np.concatenate([x, weight * collab], axis=1) if x.shape[1] else collab
        source[source == "content"] = "content+collaborative"
        source[source == ""] = "collaborative"
        has = has | ~new          # every seen item has a vector now; a new one only from its content
    return x, has


def _write(stage: str, ds, content, has, source, q, report: dict, params: dict) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    idx = np.flatnonzero(has)
    full = np.concatenate([q.codes, q.dedup[:, None]], axis=1)
    codes = pa.table({"item_id": pa.array([content.item_ids[i] for i in idx], pa.string()),
                      "token_id": pa.array(content.token_ids[idx], pa.int32()),
                      "codes": pa.array(full.tolist(), pa.list_(pa.int32())),
                      "source": pa.array(source[idx].tolist(), pa.string())})
    books = pa.table({"level": pa.array([lv + 1 for lv, b in enumerate(q.codebooks) for _ in b], pa.int32()),
                      "code": pa.array([c for b in q.codebooks for c in range(len(b))], pa.int32()),
                      "vector": pa.array([row.tolist() for b in q.codebooks for row in b], pa.list_(pa.float32()))})
    missing = np.flatnonzero(~has)
    dead = pa.table({"item_id": pa.array([content.item_ids[i] for i in missing], pa.string()),
                     "token_id": pa.array(content.token_ids[missing], pa.int32()),
                     "reason": pa.array(["no_content"] * len(missing), pa.string())})
    for name, table in ((CODES_FILE, codes), (CODEBOOKS_FILE, books), (DEADLETTER_FILE, dead)):
        pq.write_table(table, os.path.join(stage, name))
    contracts.write_json_atomic(os.path.join(stage, "report.json"), report)
    with open(os.path.join(stage, "report.md"), "w") as f:
        f.write(markdown(report))
    usage_png(q, os.path.join(stage, "codebook_usage.png"))
    manifest = {"kind": KIND, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "dataset": {"path": ds.root, "vocab_hash": ds.vocab_hash},
                "parameters": params,
                "counts": {"items": int(len(has)), "items_coded": int(len(idx)),
                           "items_dead_lettered": int(len(missing)),
                           "by_source": {s: int((source[idx] == s).sum()) for s in sorted(set(source[idx]))}},
                "tuple_length": int(full.shape[1]),
                "files_sha256": contracts.file_sha256({n: os.path.join(stage, n)
                                                       for n in (CODES_FILE, CODEBOOKS_FILE, DEADLETTER_FILE)}),
                "report": {k: report[k] for k in ("collision_rate", "largest_collision_group", "dedup_tokens")}}
    return contracts.commit_manifest(os.path.join(stage, contracts.MANIFEST), manifest)


def read_semantic_ids(path: str):
    """(codes table, manifest) of a committed artifact, its seal and file digests checked."""
    import pyarrow.parquet as pq

    manifest = contracts.read_sealed_manifest(path, SemanticIdError,
                                              f"no {contracts.MANIFEST}: not a finished semantic-ids artifact")
    found = contracts.file_sha256({name: os.path.join(path, name) for name in manifest.get("files_sha256", {})})
    for name, digest in manifest.get("files_sha256", {}).items():
        if found[name] != digest:
            raise SemanticIdError(f"{path}: {name} changed after it was written (digest differs); run "
                                  "ptum semantic-ids again")
    return pq.read_table(os.path.join(path, CODES_FILE)), manifest


def markdown(report: dict) -> str:
    lines = ["# Semantic IDs", "",
             f"{report['items']:,} items coded; collision rate before the last token "
             f"{report['collision_rate']:.4f} (largest group {report['largest_collision_group']}, "
             f"{report['dedup_tokens']} values of the last token)", "",
             "| level | codes | used | utilisation | perplexity | relative reconstruction error |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {lv['level']} | {lv['codes']} | {lv['used']} | {lv['utilisation']:.3f} | {lv['perplexity']:.1f} | "
              f"{lv['relative_reconstruction_error']:.4f} |" for lv in report["levels"]]
    lines += ["", "Counts: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report["counts"].items())), ""]
    return "\n".join(lines)


def usage_png(q, path: str) -> None:
    """Items per code, sorted, one curve per level: a flat curve is a well-used codebook."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for level, book in enumerate(q.codebooks):
        counts = np.sort(np.bincount(q.codes[:, level], minlength=len(book)))[::-1]
        ax.plot(np.arange(1, len(counts) + 1), counts, label=f"level {level + 1}")
    ax.set_xlabel("code (by rank)")
    ax.set_ylabel("items")
    ax.set_title("codebook usage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
