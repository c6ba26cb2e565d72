"""User-embedding SavedModels for TF Serving (TensorFlow backend only).

Signatures (all through keras.export.ExportArchive; no tf.keras):
  serving_default(examples: string[None])                  -> user_embedding float[None, d]
      serialized tf.Examples with the feature spec of schemas/sequence_features.json
  embed_tokens(item_ids, behavior_ids, timestamps: int64[None, None], lengths: int64[None])
                                                           -> user_embedding
      token-id rows, right-padded (what the batch export feeds)
  embed_sequences(item_ids: string[None, None], behaviors: string[None, None],
                  timestamps: int64[None, None])           -> user_embedding
      raw item ids, right-padded with "" (vocabulary lookup in the graph; unknown -> OOV)
  top_k(item_ids, behaviors, timestamps, k: int32[])       -> item_ids string[None, k], scores
      next items for raw sequences, excluding the user's history
  item_embeddings()                                        -> item_ids string[V], embeddings float[V, d],
                                                              bias float[V], space string[]
      the item table of the space serving_default's user embedding lives in: score = dot + bias
      (a profile embedding: the profile's own item table and bias; the next-item query: the
      item table top_k uses, bias 0). `space` names it; the exported item table is this one.
assets.extra/: tf_serving_warmup_requests and ptum_metadata.json.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from ptum.data import contracts
from ptum.data.features import row_to_example, tf_feature_spec
from ptum.model.generative import merge_prefix_matches
from ptum.model.layers import SequencePreprocessing

METADATA_ASSET = "ptum_metadata.json"
MAX_TIMESTAMP = 253402300799     # 9999-12-31T23:59:59Z: the tokenizer's upper bound (seconds)
PUSHED_FROM_ASSET = "ptum_pushed_from.txt"
# Outside the digest: the pusher's provenance note. The metadata asset is in it, without the
# fields that record the digest itself and the serving version (the directory's name, stamped
# by the pusher) and how it was verified.
_UNDIGESTED = {os.path.join("assets.extra", PUSHED_FROM_ASSET)}
_METADATA_REL = os.path.join("assets.extra", METADATA_ASSET)
_UNDIGESTED_FIELDS = ("saved_model_sha256", "version", "verified")


class UntrustedModel(Exception):
    """A SavedModel whose files do not match the digest it was exported (or pushed) with.
    A SavedModel is code: loading one runs its graph, so it is verified first."""


def saved_model_digest(saved_model_dir: str) -> str:
    """sha256 over every file of a SavedModel folder (relative path + content): the graph,
    the variables (vocabularies are tables in the graph), the warmup requests and the ptum
    metadata (vocab hash, which vector is which, windowing) without the fields that record
    the digest, the version and how it was verified. One digest for all that decides
    behaviour: editing the metadata's vocab_hash changes it."""
    import hashlib

    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(saved_model_dir):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, saved_model_dir)
            if rel in _UNDIGESTED:
                continue
            fh = hashlib.sha256()
            if rel == _METADATA_REL:
                try:
                    with open(full, "rb") as f:
                        meta = json.loads(f.read().decode("utf-8"))
                    body = {k: v for k, v in meta.items() if k not in _UNDIGESTED_FIELDS}
                    fh.update(json.dumps(body, sort_keys=True, default=str).encode("utf-8"))
                except (ValueError, AttributeError):
                    fh.update(b"unreadable metadata")
            else:
                with open(full, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        fh.update(block)
            h.update(rel.replace(os.sep, "/").encode() + b"\0" + fh.hexdigest().encode() + b"\n")
    return h.hexdigest()


def verify_saved_model(saved_model_dir: str, expected_sha256: Optional[str] = None) -> dict:
    """Check a SavedModel before anything loads it: its ptum metadata must exist and its
    files must match the digest recorded at export (integrity), and `expected_sha256`
    when given (trust: a digest from a source the caller trusts, e.g. the pipeline's MLMD
    record of the push). Returns the metadata, with how it was verified."""
    if not os.path.exists(os.path.join(saved_model_dir, "saved_model.pb")):
        raise UntrustedModel(f"{saved_model_dir}: not a SavedModel (no saved_model.pb)")
    try:
        meta = read_export_metadata(saved_model_dir)
    except (OSError, ValueError) as e:
        raise UntrustedModel(f"{saved_model_dir}: no readable assets.extra/{METADATA_ASSET} ({e}); "
                             "only SavedModels written by ptum export-model are loaded") from e
    recorded = meta.get("saved_model_sha256")
    actual = saved_model_digest(saved_model_dir)
    if not recorded:
        raise UntrustedModel(f"{saved_model_dir}: its metadata records no saved_model_sha256; export it again")
    if actual != recorded:
        raise UntrustedModel(f"{saved_model_dir}: files do not match the digest recorded at export "
                             f"({actual[:16]} != {recorded[:16]}): modified or incomplete, not loaded")
    if expected_sha256 is not None and actual != expected_sha256:
        raise UntrustedModel(f"{saved_model_dir}: digest {actual[:16]} is not the expected {expected_sha256[:16]}; "
                             "not loaded")
    meta["verified"] = "expected digest" if expected_sha256 else "export metadata only"
    return meta


def stamp_version(saved_model_dir: str, version) -> None:
    """Record `version` (the directory name TF Serving serves it as) in the metadata asset."""
    path = os.path.join(saved_model_dir, "assets.extra", METADATA_ASSET)
    with open(path) as f:
        meta = json.load(f)
    meta["version"] = version
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2, default=str)
    os.replace(tmp, path)


class _Exporter:
    def __init__(self, encoder, metadata: dict, vocab_dir: str):
        import pyarrow.parquet as pq

        self.encoder = encoder
        self.metadata = metadata
        self.twins = None     # a generative model's catalog items by decoded item (prefix match)
        self.width = int(metadata["max_len"])
        self.time_buckets = int(metadata.get("time_buckets", 0))
        # Windowing, padding and time buckets: the layer whose arithmetic training ran too.
        self.preprocess = SequencePreprocessing(self.width, self.time_buckets, name="preprocess")
        items = pq.read_table(os.path.join(vocab_dir, contracts.ITEMS_VOCAB))
        item_keys = items.column("item_id").to_pylist()
        item_ids = items.column("token_id").to_numpy().astype(np.int64)
        self._items(encoder, vocab_dir, item_keys, item_ids)
        beh = pq.read_table(os.path.join(vocab_dir, contracts.BEHAVIORS_VOCAB))
        beh_keys = beh.column("behavior").to_pylist() or ["<none>"]
        beh_ids = beh.column("behavior_id").to_numpy().astype(np.int64) if beh.num_rows else \
            np.array([contracts.BEHAVIOR_UNKNOWN_ID], np.int64)
        # Valid behavior ids: padding, unknown and the vocabulary (frozen with the model's).
        self.num_behaviors = max(int(beh_ids.max()) + 1, contracts.FIRST_BEHAVIOR_ID)
        self.behavior_lookup = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(beh_keys, tf.string), tf.constant(beh_ids, tf.int64)),
            default_value=contracts.BEHAVIOR_UNKNOWN_ID)

    def _item_lookups(self, item_keys, item_ids, size: int) -> None:
        """Item id <-> token id in the graph, over `size` tokens."""
        self.table_size = int(size)
        self.item_keys = tf.constant(item_keys, tf.string)
        self.item_tokens = tf.constant(item_ids, tf.int64)
        self.lookup = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.item_keys, self.item_tokens), default_value=contracts.OOV_ID)
        # Token id -> item id string, for top-k answers.
        names = np.array(["<pad>", "<mask>", "<oov>"] + [""] * (size - 3), dtype=object)
        for k, t in zip(item_keys, item_ids):
            names[t] = k
        self.token_names = tf.constant(names.astype(str).tolist(), tf.string)

    def _items(self, encoder, vocab_dir, item_keys, item_ids) -> None:
        import pyarrow.parquet as pq

        table = np.asarray(encoder.item_table(training=False), np.float32)
        self.num_items = table.shape[0]
        # Catalog items without interactions: encoded from their titles (when the model has a
        # title encoder) and appended after the trained vocabulary; otherwise they are OOV.
        cat_path = os.path.join(vocab_dir, contracts.CATALOG)
        self.catalog_only = 0
        if encoder.title_encoder is not None and os.path.exists(cat_path):
            cat = pq.read_table(cat_path)
            extra = np.asarray(contracts.catalog_only_rows(cat), np.int64)
            if len(extra):
                keys = cat.column("item_id").take(extra).to_pylist()
                words = np.zeros((len(extra), encoder.text_max_words), np.int32)
                for j, w in enumerate(cat.column("word_ids").take(extra).to_pylist()):
                    w = w[: encoder.text_max_words]
                    words[j, : len(w)] = w
                vecs = np.asarray(encoder.encode_titles(words), np.float32)
                vecs = vecs + np.asarray(encoder.item_embedding.embeddings[contracts.OOV_ID])[None]
                item_keys = item_keys + keys
                item_ids = np.concatenate([item_ids, np.arange(self.num_items, self.num_items + len(extra))])
                table = np.concatenate([table, vecs])
                self.catalog_only = len(extra)
        self.extended = tf.Variable(table, trainable=False, name="item_table")
        self._item_lookups(item_keys, item_ids, table.shape[0])

    def _check_tokens(self, item_ids, behavior_ids, timestamps, lengths):
        """Refuse (InvalidArgument) what would otherwise be clamped, broadcast or wrapped."""
        shape = tf.shape(item_ids, out_type=tf.int64)
        checks = [
            tf.debugging.assert_equal(tf.shape(behavior_ids, out_type=tf.int64), shape,
                                      message="behavior_ids must have the shape of item_ids"),
            tf.debugging.assert_equal(tf.shape(timestamps, out_type=tf.int64), shape,
                                      message="timestamps must have the shape of item_ids"),
            tf.debugging.assert_equal(tf.shape(lengths, out_type=tf.int64)[0], shape[0],
                                      message="lengths must have one entry per row"),
            tf.debugging.assert_non_negative(lengths, message="lengths must be >= 0"),
            tf.debugging.assert_less_equal(tf.cast(lengths, tf.int64), shape[1],
                                           message="a length exceeds the row width"),
            tf.debugging.assert_non_negative(item_ids, message="item token ids must be >= 0"),
            tf.debugging.assert_less(tf.cast(item_ids, tf.int64), tf.cast(self.table_size, tf.int64),
                                     message="item token id outside the vocabulary"),
            tf.debugging.assert_non_negative(behavior_ids, message="behavior ids must be >= 0"),
            tf.debugging.assert_less(tf.cast(behavior_ids, tf.int64), tf.cast(self.num_behaviors, tf.int64),
                                     message="behavior id outside the behavior vocabulary"),
        ]
        # Within each row's length: no padding or mask token (they are not behaviors), timestamps
        # inside 1970..9999 (the tokenizer's range, in seconds) and never decreasing.
        inside = tf.range(shape[1])[None, :] < tf.cast(lengths, tf.int64)[:, None]
        ids = tf.cast(item_ids, tf.int64)
        ts = tf.cast(timestamps, tf.int64)
        reserved = tf.logical_and(inside, tf.logical_or(tf.equal(ids, contracts.PAD_ID), tf.equal(ids, contracts.MASK_ID)))
        out_of_range = tf.logical_and(inside, tf.logical_or(ts < 0, ts > MAX_TIMESTAMP))
        back = tf.logical_and(inside[:, 1:], ts[:, 1:] < ts[:, :-1])
        checks += [
            tf.debugging.assert_equal(tf.reduce_any(reserved), False,
                                      message="padding (0) or mask (1) item id inside a row's length"),
            tf.debugging.assert_equal(tf.reduce_any(tf.logical_and(inside, tf.equal(tf.cast(behavior_ids, tf.int64),
                                                                                    contracts.BEHAVIOR_PAD_ID))),
                                      False, message="padding behavior id (0) inside a row's length"),
            tf.debugging.assert_equal(tf.reduce_any(out_of_range), False,
                                      message=f"timestamp outside 0..{MAX_TIMESTAMP} (epoch seconds, years 1970..9999)"),
            tf.debugging.assert_equal(tf.reduce_any(back), False,
                                      message="timestamps must not decrease within a row (oldest first)"),
        ]
        return checks

    def _embed(self, item_ids, behavior_ids, timestamps, lengths, vector="user"):
        with tf.control_dependencies(self._check_tokens(item_ids, behavior_ids, timestamps, lengths)):
            item_ids = tf.identity(item_ids)
        inputs = self.preprocess(item_ids, behavior_ids, timestamps, lengths)
        fn = self.encoder.user_embedding if vector == "user" else self.encoder.next_item_query
        return fn(inputs, training=False, item_table=self.extended)

    def serving_default(self, examples):
        parsed = tf.io.parse_example(examples, tf_feature_spec())
        lengths = _row_lengths(parsed["item_ids"])
        checks = [tf.debugging.assert_equal(_row_lengths(parsed[name]), lengths,
                                            message=f"{name} must have as many values as item_ids")
                  for name in ("behavior_ids", "timestamps")]
        with tf.control_dependencies(checks):
            lengths = tf.identity(lengths)
        ids = tf.sparse.to_dense(parsed["item_ids"])
        beh = tf.sparse.to_dense(parsed["behavior_ids"])
        ts = tf.sparse.to_dense(parsed["timestamps"])
        return {"user_embedding": self._embed(ids, beh, ts, lengths), "empty_history": tf.equal(lengths, 0)}

    def embed_tokens(self, item_ids, behavior_ids, timestamps, lengths):
        """`empty_history`: the row has no behavior (its embedding is the model's fixed prior)."""
        return {"user_embedding": self._embed(item_ids, behavior_ids, timestamps, lengths),
                "empty_history": tf.equal(tf.cast(lengths, tf.int64), 0)}

    def _raw(self, item_ids, behaviors, timestamps):
        present = tf.not_equal(item_ids, "")
        shape = tf.shape(item_ids)
        checks = [
            tf.debugging.assert_equal(tf.shape(behaviors), shape, message="behaviors must have the shape of item_ids"),
            tf.debugging.assert_equal(tf.shape(timestamps), shape, message="timestamps must have the shape of item_ids"),
            # Right padding only: no item after an empty one.
            tf.debugging.assert_equal(
                tf.reduce_any(tf.logical_and(present[:, 1:], tf.logical_not(present[:, :-1]))), False,
                message='item_ids are right-padded with "": no item may follow an empty one'),
        ]
        with tf.control_dependencies(checks):
            present = tf.identity(present)
        lengths = tf.reduce_sum(tf.cast(present, tf.int64), axis=1)
        ids = tf.where(present, self.lookup.lookup(item_ids), tf.zeros_like(item_ids, tf.int64))
        beh = tf.where(present, self.behavior_lookup.lookup(behaviors), tf.zeros_like(item_ids, tf.int64))
        return ids, beh, tf.cast(timestamps, tf.int64), lengths

    def embed_sequences(self, item_ids, behaviors, timestamps):
        ids, beh, ts, lengths = self._raw(item_ids, behaviors, timestamps)
        return {"user_embedding": self._embed(ids, beh, ts, lengths), "empty_history": tf.equal(lengths, 0)}

    def top_k(self, item_ids, behaviors, timestamps, k):
        ids, beh, ts, lengths = self._raw(item_ids, behaviors, timestamps)
        users = self._embed(ids, beh, ts, lengths, vector="query")  # top_k scores the next-item query
        scores = tf.matmul(users, self.extended, transpose_b=True)
        n = tf.shape(scores)[1]
        reserved = tf.range(n) < contracts.FIRST_ITEM_ID
        seen = tf.reduce_max(tf.one_hot(ids, n, dtype=tf.float32), axis=1) > 0
        blocked = tf.logical_or(reserved[None, :], seen)
        scores = tf.where(blocked, tf.fill(tf.shape(scores), -np.inf), scores)
        with tf.control_dependencies([tf.debugging.assert_non_negative(k, message="k must be >= 0")]):
            k = tf.identity(k)
        top = tf.math.top_k(scores, k=tf.minimum(k, n - contracts.FIRST_ITEM_ID))
        # Fewer than k unseen items: the rest are marked (item id "", score -inf, ok False),
        # never a reserved or already-seen id. An empty history's list is the model's prior, not a
        # recommendation for that user: returned, with ok False and empty_history True.
        empty = tf.equal(lengths, 0)
        ok = tf.logical_and(tf.math.is_finite(top.values), tf.logical_not(empty)[:, None])
        names = tf.where(tf.math.is_finite(top.values), tf.gather(self.token_names, top.indices),
                         tf.fill(tf.shape(top.indices), ""))
        return {"item_ids": names, "scores": top.values, "ok": ok, "empty_history": empty}

    def item_embeddings(self):
        if self.encoder.has_profile:      # the profile's items: the vocabulary (no catalog-only rows)
            table, bias = self.encoder.embedding_space()
            vocab = self.item_tokens < self.num_items
            keys, tokens = tf.boolean_mask(self.item_keys, vocab), tf.boolean_mask(self.item_tokens, vocab)
            return {"item_ids": keys, "embeddings": tf.gather(table, tokens), "bias": tf.gather(bias, tokens),
                    "space": tf.constant("profile")}
        vecs = tf.gather(self.extended, self.item_tokens)
        return {"item_ids": self.item_keys, "embeddings": vecs, "bias": tf.zeros(tf.shape(vecs)[:1], vecs.dtype),
                "space": tf.constant("next_item_query")}


class _GenerativeExporter(_Exporter):
    """A generative retrieval model's signatures: the next items of a history, decoded by beam
    search over the items' code tuples (ptum.model.generative), with top_k's inputs and checks."""

    def _items(self, model, vocab_dir, item_keys, item_ids) -> None:
        import pyarrow.parquet as pq

        self.num_items = model.num_items
        self.beam = int(self.metadata.get("beam_size") or model.generative.beam_size)
        # A model trained with generative.catalog_items: the catalog's items without events
        # follow the vocabulary (their codes came from their content), at most epsilon of a top-k.
        self.catalog_only = int((self.metadata.get("item_codes") or {}).get("catalog_items") or 0)
        self.first_catalog = self.num_items - self.catalog_only
        self.epsilon = float(model.generative.catalog_items_epsilon)
        if self.catalog_only:
            keys = contracts.catalog_only_items(pq.read_table(os.path.join(vocab_dir, contracts.CATALOG)))
            if len(keys) != self.catalog_only:
                raise ValueError(f"{vocab_dir}: {len(keys)} catalog items without events, the model was trained "
                                 f"with {self.catalog_only}")
            item_keys = item_keys + keys
            item_ids = np.concatenate([item_ids, np.arange(self.first_catalog, self.num_items)])
        # ... and each follows a decoded item whose semantic codes it shares (TIGER's cold start).
        self.twins = model.catalog_twins(self.first_catalog, self.beam) if self.catalog_only else None
        self._item_lookups(item_keys, item_ids, model.num_items)

    def _generate(self, ids, beh, ts, lengths, k):
        with tf.control_dependencies(self._check_tokens(ids, beh, ts, lengths) +
                                     [tf.debugging.assert_non_negative(k, message="k must be >= 0")]):
            ids = tf.identity(ids)
        window = self.preprocess(ids, beh, ts, lengths)["item_ids"]
        inside = tf.range(tf.shape(ids, out_type=tf.int64)[1])[None, :] < tf.cast(lengths, tf.int64)[:, None]
        history = tf.where(inside, ids, tf.cast(contracts.PAD_ID, ids.dtype))    # left out inside the search
        items, scores = self.encoder.beam_search(window, self.beam, exclude=history)
        if self.twins is not None:
            items, scores = merge_prefix_matches(items, scores, self.twins)
        seen = tf.reduce_any(tf.logical_and(tf.equal(tf.cast(items, tf.int64)[:, :, None], ids[:, None, :]),
                                            inside[:, None, :]), axis=2)
        keep = tf.logical_and(items >= contracts.FIRST_ITEM_ID, tf.logical_not(seen))
        k = tf.minimum(k, self.beam)
        if self.catalog_only:     # catalog items without events: at most max(1, floor(epsilon * k))
            cap = tf.maximum(1, tf.cast(tf.floor(self.epsilon * tf.cast(k, tf.float64) + 1e-9), tf.int32))
            new = tf.logical_and(keep, items >= self.first_catalog)
            keep = tf.logical_and(keep, tf.logical_or(tf.logical_not(new),
                                                      tf.cumsum(tf.cast(new, tf.int32), axis=1) <= cap))
        order = tf.argsort(tf.cast(tf.logical_not(keep), tf.int32), axis=1, stable=True)   # kept first, in order
        items, scores, keep = (tf.gather(x, order, batch_dims=1) for x in (items, scores, keep))
        items, scores, keep = items[:, :k], scores[:, :k], keep[:, :k]
        empty = tf.equal(lengths, 0)
        names = tf.where(keep, tf.gather(self.token_names, tf.maximum(items, 0)), tf.fill(tf.shape(items), ""))
        return {"item_ids": names, "scores": tf.where(keep, scores, tf.fill(tf.shape(scores), -np.inf)),
                "ok": tf.logical_and(keep, tf.logical_not(empty)[:, None]), "empty_history": empty}

    def top_k(self, item_ids, behaviors, timestamps, k):
        return self._generate(*self._raw(item_ids, behaviors, timestamps), k)

    def serving_default(self, examples):
        parsed = tf.io.parse_example(examples, tf_feature_spec())
        lengths = _row_lengths(parsed["item_ids"])
        dense = [tf.sparse.to_dense(parsed[name]) for name in ("item_ids", "behavior_ids", "timestamps")]
        return self._generate(*dense, lengths, tf.constant(self.beam, tf.int32))


def _twinned(twins) -> Optional[int]:
    """How many catalog items follow some decoded item (prefix match), for the metadata."""
    if twins is None:
        return None
    return int(len(np.unique(twins[twins >= 0])))


def _row_lengths(sparse):
    """Number of values per row of a 2-D SparseTensor."""
    rows = sparse.indices[:, 0]
    return tf.math.bincount(tf.cast(rows, tf.int32), minlength=tf.cast(sparse.dense_shape[0], tf.int32),
                            dtype=tf.int64)


def _warmup_requests(path: str, examples) -> None:
    """TF Serving warmup file (assets.extra/tf_serving_warmup_requests)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(path) as w:
        for batch in (examples[:1], examples[:8]):
            req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name="serving_default"))
            req.inputs["examples"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))
            w.write(log.SerializeToString())


def export_saved_model(model_dir: str, export_base: str, version: Optional[int] = None,
                       sample_rows: Optional[list] = None) -> str:
    """Write `export_base/<version>/` (the layout TF Serving watches); it appears whole or not at all.
    The version defaults to the model's own (`ptum.model.saving.model_version`); exporting the same
    model again returns the version already there.

    Returns the version directory."""
    from ptum.model.saving import load_model_dir, model_version

    from ptum.model.saving import GENERATIVE_MODEL

    encoder, metadata, cfg = load_model_dir(model_dir, generative=True)
    generative = metadata.get("model") == GENERATIVE_MODEL
    exp = (_GenerativeExporter if generative else _Exporter)(encoder, metadata, os.path.join(model_dir, "vocab"))
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    for resource in (exp.lookup, exp.behavior_lookup):
        archive.track(resource)
    i64 = tf.int64
    archive.add_endpoint("serving_default", exp.serving_default,
                         input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    raw = [tf.TensorSpec([None, None], tf.string, name="item_ids"),
           tf.TensorSpec([None, None], tf.string, name="behaviors"),
           tf.TensorSpec([None, None], i64, name="timestamps")]
    archive.add_endpoint("top_k", exp.top_k, input_signature=raw + [tf.TensorSpec([], tf.int32, name="k")])
    signatures = ["serving_default", "top_k"]
    if not generative:
        _embedding_endpoints(archive, exp, raw)
        signatures += ["embed_tokens", "embed_sequences", "item_embeddings"]
    version = int(version or model_version(metadata))
    os.makedirs(export_base, exist_ok=True)
    final = os.path.join(export_base, str(version))
    if os.path.exists(final):
        if _same_model(final, metadata):
            return final        # this model, exported before: versions are immutable, and it is this one
        raise FileExistsError(f"{final} exists and holds another model: model versions are immutable; "
                              "choose another --version")
    tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(tmp, verbose=False) if "verbose" in archive.write_out.__code__.co_varnames \
        else archive.write_out(tmp)
    extra = os.path.join(tmp, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    rows = sample_rows or [{"user_id": "warmup", "item_ids": [contracts.FIRST_ITEM_ID], "timestamps": [0],
                            "behavior_ids": [contracts.BEHAVIOR_UNKNOWN_ID], "length": 1}]
    _warmup_requests(os.path.join(extra, "tf_serving_warmup_requests"), [row_to_example(r) for r in rows])
    meta = dict(metadata)
    meta.update({"config": cfg.to_dict(), "version": version, "source_model": os.path.abspath(model_dir),
                 "catalog_only_items": exp.catalog_only,
                 "catalog_items_with_twins": _twinned(exp.twins),
                 "signatures": signatures})
    meta_path = os.path.join(extra, METADATA_ASSET)
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2, default=str)
    meta["saved_model_sha256"] = saved_model_digest(tmp)    # covers the metadata just written
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2, default=str)
    os.replace(tmp, final)
    return final


def _embedding_endpoints(archive, exp: _Exporter, raw) -> None:
    """The user encoder's signatures beyond serving_default and top_k."""
    i64 = tf.int64
    archive._tf_trackable.item_table = exp.extended  # noqa: SLF001 (the extended table is not a Keras variable)
    archive.add_endpoint("embed_tokens", exp.embed_tokens, input_signature=[
        tf.TensorSpec([None, None], i64, name="item_ids"), tf.TensorSpec([None, None], i64, name="behavior_ids"),
        tf.TensorSpec([None, None], i64, name="timestamps"), tf.TensorSpec([None], i64, name="lengths")])
    archive.add_endpoint("embed_sequences", exp.embed_sequences, input_signature=raw)
    archive.add_endpoint("item_embeddings", exp.item_embeddings, input_signature=[])


def _same_model(saved_model_dir: str, metadata: dict) -> bool:
    """Whether an exported version was made from a model with these files (digests)."""
    try:
        theirs = read_export_metadata(saved_model_dir)
    except (OSError, ValueError):
        return False
    return bool(metadata.get("files_sha256")) and theirs.get("files_sha256") == metadata.get("files_sha256") \
        and theirs.get("vocab_hash") == metadata.get("vocab_hash")


def read_export_metadata(saved_model_dir: str) -> dict:
    """The metadata asset; `version` is the directory's (TF Serving's) when it is a number."""
    with open(os.path.join(saved_model_dir, "assets.extra", METADATA_ASSET)) as f:
        meta = json.load(f)
    base = os.path.basename(os.path.normpath(saved_model_dir))
    if base.isdigit():
        meta["version"] = int(base)
    return meta
