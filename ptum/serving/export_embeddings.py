"""Beam job: a sequence dataset + a user-embedding SavedModel -> Parquet embedding table.

  EmbedUsers (ListFiles -> ReadRowBatches -> Spread -> EmbedBatch: SavedModel loaded once per
  worker, `embed_tokens` signature: the serving graph itself, so batch and serving agree; writes
  the shards -> SumCounts) -> WriteManifest (last: the commit marker)

Output rows: user_id, embedding (fixed-size list<float32>), model_version, vocab_hash,
as_of (the newest behavior's timestamp), all_oov (every behavior was out of vocabulary).
"""
from __future__ import annotations

import datetime
import json
import os
from typing import List, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from ptum import fs
from ptum.data import contracts
from ptum.data.ingest import formats, reader, sink

EMBEDDINGS_DIR = "embeddings"


class ExportError(Exception):
    pass


def padded_tokens(batch: pa.RecordBatch, width: int):
    """List columns -> right-padded int64 arrays of each row's newest `width` entries."""
    import pyarrow.compute as pc

    lens = np.asarray(pc.fill_null(pc.list_value_length(batch.column("item_ids")), 0), np.int64)
    n = np.minimum(lens, width)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    w = max(int(n.max()) if len(n) else 1, 1)
    col = np.arange(w)[None, :]
    valid = col < n[:, None]
    src = np.where(valid, (offsets[1:] - n)[:, None] + col, 0)
    out = {}
    for name in ("item_ids", "behavior_ids", "timestamps"):
        flat = np.asarray(pc.list_flatten(batch.column(name)), np.int64)
        if len(flat) == 0:
            flat = np.zeros(1, np.int64)
        out[name] = np.where(valid, flat[src], 0).astype(np.int64)
    return out, n.astype(np.int64), lens


class ReadRowBatches(beam.DoFn):
    """(file index, Parquet file, files of a fuller split) -> record batches; rows of users
    who have a row in those other files are left out (their fuller history is read there).
    The worker reads those files' user ids itself: nothing per user passes through the driver
    or the pipeline graph."""

    def __init__(self, batch_rows: int):
        self._rows = batch_rows

    def process(self, element):
        import pyarrow.compute as pc

        file_idx, path, skip_from = element
        skip_set = None
        if skip_from:
            skip_set = pa.concat_arrays([_user_ids(f) for f in skip_from])
            skip_set = skip_set if len(skip_set) else None
        pf = reader.parquet_file(path)
        for i, batch in enumerate(pf.iter_batches(batch_size=self._rows)):
            if skip_set is not None:
                keep = pc.invert(pc.is_in(batch.column("user_id"), value_set=skip_set))
                batch = batch.filter(keep)
                if batch.num_rows == 0:
                    continue
            yield file_idx, i, batch


# What each column of an embedding table means (Parquet field metadata, and the README's table).
COLUMNS = {
    "user_id": "the user's id as in the logs",
    "embedding": "the user embedding (see the schema's ptum.user_embedding for which vector and its space)",
    "model_version": "the SavedModel version that computed it (the version TF Serving serves)",
    "vocab_hash": "hash of the item vocabulary (item id -> token id) the model and dataset share",
    "as_of": "epoch seconds of the newest behavior in the history that was embedded",
    "all_oov": "true when every item of the history was outside the model's vocabulary (a prior-like vector)",
}


ITEMS_FILE = "items.parquet"
SCORING = "score = dot(user.embedding, item.embedding) + item.bias = dot([user.embedding, 1], item.retrieval_vector)"
ITEM_COLUMNS = {
    "item_id": "the item's id as in the logs",
    "embedding": "the item's vector in the space of the users' embedding (the schema's ptum.space)",
    "bias": "the item's score offset in that space (0 for the next-item query space)",
    "retrieval_vector": "[embedding, bias]: its dot product with [user embedding, 1] is the model's score",
}


def _write_items(saved: str, output: str, metadata: dict) -> Optional[dict]:
    """The item table of the users' space (the SavedModel's item_embeddings) -> output/items.parquet;
    what the manifest records of it. None for a SavedModel exported before the signature named
    its space (its table may be another space's)."""
    import tensorflow as tf

    out = tf.saved_model.load(saved).signatures["item_embeddings"]()
    if "space" not in out:
        return None
    keys = [k.decode() for k in out["item_ids"].numpy().tolist()]
    emb, bias = out["embeddings"].numpy().astype(np.float32), out["bias"].numpy().astype(np.float32)
    space, d = out["space"].numpy().decode(), emb.shape[1]
    described = {"space": space, "scoring": SCORING, **metadata}
    types = {"item_id": pa.string(), "embedding": pa.list_(pa.float32(), d), "bias": pa.float32(),
             "retrieval_vector": pa.list_(pa.float32(), d + 1)}
    schema = pa.schema([pa.field(n, t, metadata={"description": ITEM_COLUMNS[n]}) for n, t in types.items()],
                       metadata={f"ptum.{k}": json.dumps(v, sort_keys=True, default=str) for k, v in described.items()})
    vectors = np.concatenate([emb, bias[:, None]], axis=1)
    table = pa.Table.from_arrays([pa.array(keys, pa.string()),
                                  pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), d), pa.array(bias),
                                  pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), d + 1)],
                                 schema=schema)
    sink.write_parquet(table, sink.join(output, ITEMS_FILE))
    return {"file": ITEMS_FILE, "items": len(keys), "space": space, "dim": d, "scoring": SCORING}


def table_schema(dim: int, metadata: dict) -> pa.Schema:
    """The embedding table's schema: column descriptions, and `metadata` (JSON values) under
    `ptum.*` keys."""
    types = {"user_id": pa.string(), "embedding": pa.list_(pa.float32(), dim), "model_version": pa.string(),
             "vocab_hash": pa.string(), "as_of": pa.int64(), "all_oov": pa.bool_()}
    fields = [pa.field(name, typ, metadata={"description": COLUMNS[name]}) for name, typ in types.items()]
    return pa.schema(fields, metadata={f"ptum.{k}": json.dumps(v, sort_keys=True, default=str)
                                       for k, v in metadata.items()})


class EmbedBatch(beam.DoFn):
    """Loads the SavedModel once per worker (DoFn.setup) and embeds Arrow batches."""

    def __init__(self, saved_model: str, output: str, width: int, model_version: str, vocab_hash: str,
                 tfrecord: bool, schema_metadata: Optional[dict] = None):
        self._path, self._output, self._width = saved_model, output, width
        self._version, self._vocab_hash, self._tfrecord = model_version, vocab_hash, tfrecord
        self._schema_metadata = {"model_version": model_version, "vocab_hash": vocab_hash,
                                 **(schema_metadata or {})}
        self._users = Metrics.counter("export", "users")
        self._oov = Metrics.counter("export", "users_all_oov")

    def setup(self):
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(self._path)
        self._fn = self._model.signatures["embed_tokens"]

    def process(self, element):
        file_idx, batch_idx, batch = element
        tf = self._tf
        tokens, n, lens = padded_tokens(batch, self._width)
        emb = self._fn(item_ids=tf.constant(tokens["item_ids"]), behavior_ids=tf.constant(tokens["behavior_ids"]),
                       timestamps=tf.constant(tokens["timestamps"]), lengths=tf.constant(n))["user_embedding"]
        emb = emb.numpy().astype(np.float32)
        d = emb.shape[1]
        ids = tokens["item_ids"]
        all_oov = ((ids == contracts.OOV_ID) | (np.arange(ids.shape[1])[None, :] >= n[:, None])).all(axis=1)
        last_ts = tokens["timestamps"][np.arange(len(n)), np.maximum(n - 1, 0)]
        table = pa.Table.from_arrays([
            batch.column("user_id").cast(pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), d),
            pa.array([self._version] * len(n), pa.string()),
            pa.array([self._vocab_hash] * len(n), pa.string()),
            pa.array(last_ts, pa.int64()),
            pa.array(all_oov, pa.bool_()),
        ], schema=table_schema(d, self._schema_metadata))
        name = f"embeddings-{file_idx:05d}-{batch_idx:05d}"
        sink.write_parquet(table, sink.join(self._output, EMBEDDINGS_DIR, name + ".parquet"))
        files = [name + ".parquet"]
        if self._tfrecord:
            files.append(self._write_tfrecord(table, name))
        self._users.inc(len(n))
        self._oov.inc(int(all_oov.sum()))
        yield {"users": int(len(n)), "users_all_oov": int(all_oov.sum()),
               "users_without_behaviors": int((lens == 0).sum()), "files": files}

    def _write_tfrecord(self, table, name) -> str:
        from ptum.data.features import arrow_to_examples

        tf = self._tf
        path = sink.join(self._output, EMBEDDINGS_DIR, name + ".tfrecord")
        tmp = fs.temp_path(path)
        with tf.io.TFRecordWriter(tmp) as w:
            for example in arrow_to_examples({"user_id": table.column("user_id"),
                                              "embedding": table.column("embedding")}):
                w.write(example)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return name + ".tfrecord"


class EmbedUsers(beam.PTransform):
    """Sequence files -> embedding shards written under `output`; returns one dict of
    counts (users, users_all_oov, users_without_behaviors, files).

    `units`: [(path, files of a fuller split)]: a file's rows of users who have a row in
    those files are left out."""

    def __init__(self, units, saved_model: str, output: str, width: int, model_version: str, vocab_hash: str,
                 batch_rows: int = 2048, tfrecord: bool = False, schema_metadata: Optional[dict] = None):
        super().__init__()
        self._units, self._rows = units, batch_rows
        self._embed = EmbedBatch(saved_model, output, width, model_version, vocab_hash, tfrecord, schema_metadata)

    def expand(self, pbegin):
        return (pbegin
                | "ListFiles" >> beam.Create([(i, f, tuple(skip)) for i, (f, skip) in enumerate(self._units)])
                | "ReadRowBatches" >> beam.ParDo(ReadRowBatches(self._rows))
                | "Spread" >> beam.Reshuffle()
                | "EmbedBatch" >> beam.ParDo(self._embed)
                | "SumCounts" >> beam.CombineGlobally(_sum))


def _user_ids(path: str) -> pa.Array:
    return sink.read_parquet(path, ["user_id"]).column("user_id").combine_chunks().cast(pa.string())


def same_users_files(ds, split: str, fuller: str):
    """{file of `split`: [the files of `fuller` that can hold the same users]}.

    Both tokenizers write every split of a user bucket to the shard with the same index
    (`<split>-<shard>-of-<n>.parquet`), so a train shard's users can only have test rows in
    the test shard of that index; a dataset named otherwise pairs each file with all of them."""
    import re

    def shard(path):
        m = re.search(r"-(\d{5}-of-\d{5})\.parquet$", os.path.basename(path))
        return m.group(1) if m else None

    fuller_files = ds.split_files(fuller)
    by_shard = {shard(f): f for f in fuller_files}
    out = {}
    for f in ds.split_files(split):
        key = shard(f)
        if key is None or None in by_shard:
            out[f] = list(fuller_files)
        else:
            out[f] = [by_shard[key]] if key in by_shard else []
    return out


def _sum(dicts):
    out = {"users": 0, "users_all_oov": 0, "users_without_behaviors": 0, "files": []}
    for d in dicts:
        for k in ("users", "users_all_oov", "users_without_behaviors"):
            out[k] += d[k]
        out["files"] = out["files"] + d["files"]
    return out


def _write_manifest(counts, output, info):
    """The commit step: refuses (no manifest, so the previous export stays) when the export
    does not hold every user of the dataset."""
    expected = info.get("dataset_users")
    if expected is not None and counts["users"] != expected:
        raise formats.InputError(f"{output}: {counts['users']} users embedded, the dataset has {expected}; "
                               "nothing was committed")
    manifest = {**info, "counts": {k: v for k, v in counts.items() if k != "files"},
                "files": sorted(sink.join(EMBEDDINGS_DIR, f) for f in counts["files"]),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    return contracts.commit_manifest(sink.join(output, contracts.MANIFEST), manifest)


def resolve_saved_model(model: str, output: str):
    """(SavedModel version dir, digest to expect or None): a SavedModel dir as is; a
    pre-training model dir is exported first (to output/saved_model/<version>/, the model's own
    version, the one `ptum export-model` and the pipeline's pusher give it), and the digest of
    that export is trusted."""
    if os.path.exists(os.path.join(model, "saved_model.pb")):
        return model, None
    if os.path.exists(os.path.join(model, "metadata.json")):
        from ptum.model.saving import GENERATIVE_MODEL
        with open(os.path.join(model, "metadata.json")) as f:
            if json.load(f).get("model") == GENERATIVE_MODEL:
                raise ExportError(f"{model}: a generative retrieval model has no user embedding to export; "
                                  "ptum export-model serves its top_k")
        from ptum.serving.saved_model import export_saved_model, read_export_metadata
        saved = export_saved_model(model, os.path.join(output, "saved_model"))
        return saved, read_export_metadata(saved)["saved_model_sha256"]
    raise ExportError(f"{model}: neither a SavedModel (saved_model.pb) nor a finished ptum model (metadata.json)")


def run(model: str, data: str, output: str, split: Optional[str] = None, batch_rows: int = 2048,
        tfrecord: bool = False, beam_args: Optional[List[str]] = None,
        expected_sha256: Optional[str] = None) -> dict:
    """Embed every user (see `_run`), holding the output folder's lock."""
    import re

    if expected_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", expected_sha256.strip().lower()):
        raise ExportError(f"--expected-sha256 {expected_sha256!r}: not a sha256 digest (64 hex digits); leave the "
                          "option out to check the model against its own metadata only")
    expected_sha256 = expected_sha256.strip().lower() if expected_sha256 is not None else None
    contracts.check_output_kind(output, "embeddings", ExportError)
    for what, path in (("dataset", data), ("model", model)):
        if os.path.abspath(output) == os.path.abspath(path):
            raise ExportError(f"--output {output}: is the {what} itself; choose another folder")
    with contracts.output_lock(output, "ptum export-embeddings", ExportError):
        with fs.staged_dir(output) as stage:
            _run(model, data, stage, split, batch_rows, tfrecord, beam_args, expected_sha256, final=output)
    return read_manifest(output)


def read_manifest(output: str) -> dict:
    """The committed export's manifest, its seal checked (refuses an unfinished export)."""
    return contracts.read_sealed_manifest(output, ExportError, "no manifest: the export did not finish")


def _run(model: str, data: str, output: str, split: Optional[str] = None, batch_rows: int = 2048,
         tfrecord: bool = False, beam_args: Optional[List[str]] = None,
         expected_sha256: Optional[str] = None, final: Optional[str] = None) -> None:
    """Write the export into `output` (a stage that replaces `final`).
    `expected_sha256`: the SavedModel's digest from a trusted record (the pusher's MLMD
    property, `ptum export-model`'s output); without it the model is checked against the
    digest in its own metadata only (integrity, not trust)."""
    from ptum.data.ingest.job import make_pipeline, run_pipeline
    from ptum.serving.saved_model import UntrustedModel, verify_saved_model

    ds = contracts.open_dataset(data)
    saved, exported_digest = resolve_saved_model(model, output)
    try:
        meta = verify_saved_model(saved, expected_sha256 or exported_digest)
    except UntrustedModel as e:
        raise ExportError(str(e)) from e
    if "user_embedding" not in meta:
        raise ExportError(f"{model}: a {meta.get('model', 'model')} has no user embedding to export (a generative "
                          "retrieval model answers top_k only)")
    if meta["vocab_hash"] != ds.vocab_hash:
        raise ExportError(f"{data}: vocabulary {ds.vocab_hash} does not match the model's {meta['vocab_hash']}; "
                          "tokenize with --vocab-from the model's training dataset")
    # (file, the files of a fuller split whose users this file's rows leave out)
    if split is not None:
        units = [(f, []) for f in ds.split_files(split)]
    elif ds.manifest["split_scheme"] == "user-hash":
        split = "pretrain+finetune"
        units = [(f, []) for s in ("pretrain", "finetune") for f in ds.split_files(s)]
    else:
        # Newest history of every user: the test row where there is one, else the train row
        # (leave-one-out users with fewer than 3 behaviors, time-cut users with no target).
        split = "test+train"
        units = [(f, []) for f in ds.split_files("test")] + sorted(same_users_files(ds, "train", "test").items())
    for name in ({"test+train": ("test", "train"), "pretrain+finetune": ("pretrain", "finetune")}.get(split)
                 or (split,)):
        ds.check_files(name)
    final = final or output
    mpath = sink.join(output, contracts.MANIFEST)
    fs.remove(mpath)                    # an object store's output is written in place: uncommit first
    fs.remove(sink.join(output, EMBEDDINGS_DIR))
    fs.makedirs(output)
    where = os.path.abspath(saved)
    if fs.is_local(output) and where.startswith(os.path.abspath(output) + os.sep):   # exported into the stage
        where = os.path.join(os.path.abspath(final), os.path.relpath(where, os.path.abspath(output)))
    expected_users = ds.manifest["counts"]["users"] if split in ("test+train", "pretrain+finetune") else None
    info = {"kind": "embeddings", "model": where, "model_version": str(meta["version"]),
            "saved_model_sha256": meta["saved_model_sha256"], "model_verified": meta["verified"],
            "vocab_hash": ds.vocab_hash,
            "data": data, "split": split, "dim": meta["user_embedding"]["dim"],
            "user_embedding": meta["user_embedding"], "tfrecord": tfrecord, "dataset_users": expected_users}
    info["items"] = _write_items(saved, output, {"model_version": str(meta["version"]), "vocab_hash": ds.vocab_hash})
    p, runner = make_pipeline(beam_args)
    info["runner"] = runner
    described = {"user_embedding": meta["user_embedding"], "saved_model_sha256": meta["saved_model_sha256"],
                 "config": meta.get("config"), "split": split}
    counts = p | "EmbedUsers" >> EmbedUsers(units, saved, output, int(meta["max_len"]), str(meta["version"]),
                                             ds.vocab_hash, batch_rows=batch_rows, tfrecord=tfrecord,
                                             schema_metadata=described)
    # The counts are the commit step's main input (no side input): it is the last step and
    # depends on every embedding shard.
    _ = counts | "WriteManifest" >> beam.Map(_write_manifest, output, info)
    try:
        run_pipeline(p)
    except formats.InputError as e:   # the commit step's refusal, or a damaged dataset file
        raise ExportError(str(e)) from None


def read_embeddings(output: str) -> pa.Table:
    """The committed embedding table (refuses an export without a manifest)."""
    m = read_manifest(output)
    return pa.concat_tables([sink.read_parquet(sink.join(output, f)) for f in m["files"] if f.endswith(".parquet")])
