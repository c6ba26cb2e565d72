"""Fine-tuning the pre-trained user model for downstream tasks.

Tasks:
  classify  user attribute (binary or multi-class) from a label table (user_id + label column)
  ctr       user x candidate item -> clicked, from an impressions table (user_id, item_id, clicked)
Modes:
  full      encoder + head; the head is trained first on a frozen encoder (`head_epochs`),
            then everything at `encoder_lr_scale` x the learning rate (gradual unfreezing)
  frozen    head on fixed user embeddings (PTUM's "static" mode)
The fine-tuned model keeps the user embedding and adds the task output.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ptum import fs
from ptum.config import FinetuneConfig
from ptum.data import contracts
from ptum.data.batches import Rows, pad_batch


class LabelError(Exception):
    """Labels that cannot give a meaningful run (one class left, no known users, ...)."""


# ------------------------------------------------------------------ labels
def read_table(path: str):
    """A label or impressions table (CSV with a header, or Parquet); ids read as strings."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise LabelError(f"{path}: label file not found")
    if path.endswith(".parquet"):
        return pq.read_table(path)
    opts = pacsv.ConvertOptions(strings_can_be_null=True,
                                column_types={"user_id": pa.string(), "item_id": pa.string()})
    return pacsv.read_csv(path, convert_options=opts)


def latest_rows(ds: contracts.SequenceDataset) -> Rows:
    """Each user's newest full history: the test row where there is one, else the train row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if ds.manifest["split_scheme"] == "user-hash":
        return Rows.from_table(pa.concat_tables([ds.read_split("pretrain"), ds.read_split("finetune")]))
    test = ds.read_split("test")
    train = ds.read_split("train")
    extra = train.filter(pc.invert(pc.is_in(train.column("user_id"), value_set=test.column("user_id"))))
    return Rows.from_table(pa.concat_tables([test, extra]))


def join_labels(rows: Rows, labels, label_column: str,
                duplicates: str = "error") -> Tuple[np.ndarray, List[str], np.ndarray, dict]:
    """(row index per labelled user, class names, label index per user, report).
    `duplicates`: what a user whose label rows disagree gets (FinetuneConfig.duplicate_labels)."""
    if "user_id" not in labels.column_names:
        raise LabelError(f"label table has no user_id column (columns: {labels.column_names})")
    if label_column not in labels.column_names:
        raise LabelError(f"label table has no {label_column!r} column (columns: {labels.column_names})")
    users = [None if u is None else str(u) for u in labels.column("user_id").to_pylist()]
    values = labels.column(label_column).to_pylist()
    report = {"label_rows": len(users), "missing_values": 0, "duplicate_user_rows": 0,
              "conflicting_label_users": 0, "duplicate_policy": duplicates, "users_absent_from_dataset": 0}
    row_of = {u: i for i, u in enumerate(rows.user_ids.tolist())}
    by_user: Dict[str, List[str]] = {}
    for u, v in zip(users, values):
        if u is None or v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and v != v):
            report["missing_values"] += 1
            continue
        if u in by_user:
            report["duplicate_user_rows"] += 1
        by_user.setdefault(u, []).append(str(v))
    conflicts = [u for u, vs in by_user.items() if len(set(vs)) > 1]
    report["conflicting_label_users"] = len(conflicts)
    if conflicts and duplicates == "error":
        u = conflicts[0]
        raise LabelError(f"{label_column}: {len(conflicts)} user(s) have label rows that disagree, e.g. {u!r}: "
                         f"{sorted(set(by_user[u]))}; fix the labels or set duplicate_labels to first, last or drop")
    kept_u, kept_v = [], []
    for u, vs in by_user.items():
        if u not in row_of:
            report["users_absent_from_dataset"] += 1
            continue
        if len(set(vs)) > 1 and duplicates == "drop":
            continue
        kept_u.append(row_of[u])
        kept_v.append(vs[-1] if duplicates == "last" else vs[0])
    classes = sorted(set(kept_v))
    report["users_labelled"] = len(kept_u)
    report["class_counts"] = {c: kept_v.count(c) for c in classes}
    if len(classes) < 2:
        raise LabelError(f"{label_column}: {len(classes)} class(es) left after cleaning "
                         f"({json.dumps(report)}); a classifier needs at least 2")
    idx = {c: i for i, c in enumerate(classes)}
    return np.array(kept_u, np.int64), classes, np.array([idx[v] for v in kept_v], np.int64), report


def join_impressions(rows: Rows, imps, items_vocab) -> Tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(row index, candidate token id, clicked) per impression, and a report."""
    for col in ("user_id", "item_id", "clicked"):
        if col not in imps.column_names:
            raise LabelError(f"impressions table has no {col!r} column (columns: {imps.column_names})")
    row_of = {u: i for i, u in enumerate(rows.user_ids.tolist())}
    tok = dict(zip(items_vocab.column("item_id").to_pylist(), items_vocab.column("token_id").to_pylist()))
    report = {"impressions": imps.num_rows, "missing_values": 0, "users_absent_from_dataset": 0,
              "unknown_items": 0, "bad_clicked_values": 0}
    r, c, y = [], [], []
    for u, it, cl in zip(imps.column("user_id").to_pylist(), imps.column("item_id").to_pylist(),
                         imps.column("clicked").to_pylist()):
        if u is None or it is None or cl is None:
            report["missing_values"] += 1
            continue
        if str(cl) not in ("0", "1", "True", "False", "true", "false"):
            report["bad_clicked_values"] += 1
            continue
        if str(u) not in row_of:
            report["users_absent_from_dataset"] += 1
            continue
        t = tok.get(str(it))
        if t is None:
            report["unknown_items"] += 1
            t = contracts.OOV_ID
        r.append(row_of[str(u)])
        c.append(t)
        y.append(1 if str(cl) in ("1", "True", "true") else 0)
    y = np.array(y, np.int64)
    report["impressions_used"] = len(y)
    report["class_counts"] = {"0": int((y == 0).sum()), "1": int((y == 1).sum())}
    if len(y) == 0 or y.min() == y.max():
        raise LabelError(f"impressions: need both clicked and not-clicked rows ({json.dumps(report)})")
    return np.array(r, np.int64), np.array(c, np.int64), y, report


# ------------------------------------------------------------------ metrics
def classification_metrics(y: np.ndarray, prob: np.ndarray, n_classes: int) -> Dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    prob = np.clip(prob, 1e-7, 1 - 1e-7)
    prob = prob / prob.sum(axis=1, keepdims=True)
    pred = prob.argmax(axis=1)
    out = {"accuracy": float(accuracy_score(y, pred)),
           "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(n_classes)), zero_division=0)),
           "log_loss": float(log_loss(y, prob, labels=list(range(n_classes)))), "n": int(len(y))}
    present = np.unique(y)
    if n_classes == 2:
        out["auc"] = float(roc_auc_score(y, prob[:, 1])) if len(present) == 2 else float("nan")
    else:
        aucs = [roc_auc_score(y == k, prob[:, k]) for k in range(n_classes) if 0 < (y == k).sum() < len(y)]
        out["auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return out


# ------------------------------------------------------------------ model
def _stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    valid = []
    for k in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == k))
        n = int(round(len(members) * fraction))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        else:
            n = 0
        valid.extend(members[:n].tolist())
    valid = np.array(sorted(valid), np.int64)
    train = np.setdiff1d(np.arange(len(y)), valid)
    return train, valid


def build_finetune_model(encoder, n_outputs: int, cfg: FinetuneConfig, task: str, mean=None, variance=None,
                         n_train: int = 1):
    """encoder + head. classify: softmax over classes; ctr: sigmoid(f(u, item))."""
    from ptum.model.heads import FinetuneModel
    return FinetuneModel(encoder, task=task, n_outputs=n_outputs, hidden=cfg.hidden, dropout=cfg.dropout,
                         head=cfg.head, mean=mean, variance=variance,
                         l2=cfg.head_l2 / (2.0 * max(n_train, 1)), name=f"ptum_{task}")


def embed_rows(encoder, rows: Rows, idx: np.ndarray, width, buckets, time_buckets) -> np.ndarray:
    """User embeddings [len(idx), d] of rows `idx` (inference mode), in idx order."""
    from keras import ops
    out = None
    for sel, b in _batches(rows, idx, None, width, buckets, time_buckets, 256):
        e = np.asarray(ops.convert_to_numpy(encoder.user_embedding(b, training=False)), np.float32)
        if out is None:
            out = np.zeros((len(idx), e.shape[1]), np.float32)
        out[sel] = e
    return out if out is not None else np.zeros((0, 0), np.float32)


def _batches(rows: Rows, idx: np.ndarray, cand: Optional[np.ndarray], width, buckets, time_buckets, size):
    from ptum.data.batches import bucket_width
    order = np.argsort(rows.lengths[idx], kind="stable")
    for s in range(0, len(order), size):
        sel = order[s:s + size]
        ridx = idx[sel]
        w = bucket_width(int(min(rows.lengths[ridx].max(), width)), [b for b in buckets if b < width], width)
        b = pad_batch(rows, ridx, w, time_buckets=time_buckets)
        if cand is not None:
            b["candidate"] = cand[sel].astype(np.int32)
        yield sel, b


class _FitData:
    """Shuffled training batches (numpy), fresh order each epoch from (seed, epoch)."""

    def __init__(self, rows, idx, cand, y, weights, width, buckets, time_buckets, size, seed):
        self.args = (rows, idx, cand, y, weights, width, buckets, time_buckets, size, seed)

    def epoch(self, e):
        rows, idx, cand, y, weights, width, buckets, time_buckets, size, seed = self.args
        rng = np.random.default_rng([seed, e])
        perm = rng.permutation(len(idx))
        for s in range(0, len(perm), size):
            sel = perm[s:s + size]
            b = pad_batch(rows, idx[sel], width, time_buckets=time_buckets)
            if cand is not None:
                b["candidate"] = cand[sel].astype(np.int32)
            yield b, y[sel], weights[sel]


def _fit(model, epoch_batches: Callable, epochs: int, steps: int, callbacks: list) -> None:
    """`model.fit` on `epoch_batches(e)` for e in 0..epochs-1, each yielding `steps` batches of
    (x, y, sample weight) in the order given (a tf.data generator under TensorFlow)."""
    import keras

    data = (batch for e in range(epochs) for batch in epoch_batches(e))
    if keras.backend.backend() == "tensorflow":
        from ptum.data.tf_input import generator_dataset
        data = generator_dataset(data)
    model.fit(data, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0, shuffle=False)


def finetune(encoder, meta: dict, rows: Rows, cfg: FinetuneConfig, row_idx: np.ndarray, y: np.ndarray,
             n_classes: int, train: np.ndarray, valid: np.ndarray, cand: Optional[np.ndarray] = None,
             log: Callable[[str], None] = print):
    """Train the head (and the encoder in full mode) with `fit`; early-stop on validation
    log-loss (callbacks in ptum.training.callbacks). Two phases share the best weights: the
    head alone on the frozen encoder, then (full mode) encoder and head together.

    Returns (model, validation metrics, history, predict)."""
    import keras

    keras.utils.set_random_seed(cfg.seed)
    run = _Finetuning(encoder, meta, rows, cfg, row_idx, y, n_classes, train, valid, cand, log)
    encoder.trainable = False
    if run.head_epochs:
        run.head_phase()
    if cfg.mode == "full" and cfg.epochs:
        run.full_phase()
    if len(valid) and run.best["weights"] is not None:
        run.model.set_weights(run.best["weights"])
        log(f"kept the weights of the {run.best['phase']} phase's epoch {run.best['best_epoch']} (valid log-loss "
            f"{run.best['best']:.4f})")
    encoder.trainable = True
    final = classification_metrics(y[valid], run.predict(valid), max(n_classes, 2)) if len(valid) else {}
    return run.model, final, run.history, run.predict


class _Finetuning:
    """One fine-tuning run: the model built on the encoder, the class weights, the batches,
    the early-stopping state both phases share, and the two phases."""

    def __init__(self, encoder, meta: dict, rows: Rows, cfg: FinetuneConfig, row_idx: np.ndarray, y: np.ndarray,
                 n_classes: int, train: np.ndarray, valid: np.ndarray, cand: Optional[np.ndarray], log):
        import keras

        self.encoder, self.rows, self.cfg, self.row_idx, self.y = encoder, rows, cfg, row_idx, y
        self.n_classes, self.train, self.valid, self.cand, self.log = n_classes, train, valid, cand, log
        task = self.task = cfg.task
        self.width, self.buckets, self.tb = meta["max_len"], meta["length_buckets"], meta["time_buckets"]
        width, buckets, tb = self.width, self.buckets, self.tb
        self.head_epochs = cfg.head_epochs if cfg.mode == "full" else max(cfg.head_epochs, cfg.epochs)
        # The frozen encoder's embeddings of the training users, computed once: the head phase
        # trains on them and the standardisation takes their moments.
        self.u_train = embed_rows(encoder, rows, row_idx[train], width, buckets, tb) \
            if (self.head_epochs or cfg.standardize) else None
        mean = var = None
        if cfg.standardize:
            mean = self.u_train.mean(axis=0, dtype=np.float64)
            var = np.maximum(self.u_train.var(axis=0, dtype=np.float64), 1e-8)
        self.model = build_finetune_model(encoder, n_classes if task == "classify" else 1, cfg, task, mean=mean,
                                          variance=var, n_train=len(train))
        counts = np.bincount(y[train], minlength=n_classes if task == "classify" else 2).astype(np.float64)
        if cfg.class_weight == "balanced":
            cw = len(train) / (len(counts) * np.maximum(counts, 1))
        else:
            cw = np.ones(len(counts))
        self.weights = cw[y].astype(np.float32)
        c_train = cand[train] if cand is not None else None
        self.data = _FitData(rows, row_idx[train], c_train, y[train], self.weights[train], width, buckets, tb,
                             cfg.batch_size, cfg.seed)
        self.loss = keras.losses.SparseCategoricalCrossentropy() if task == "classify" \
            else keras.losses.BinaryCrossentropy()
        self.history: List[dict] = []
        # Shared by both phases: fine-tuning keeps the probe unless it beats the probe's best.
        self.best = {"best": float("inf"), "best_epoch": -1, "wait": 0, "weights": None}
        self.n_batches = -(-len(train) // cfg.batch_size)

    def target(self, yb):
        return yb if self.task == "classify" else yb.astype(np.float32)[:, None]

    def predict(self, idx):
        import keras

        out = np.zeros((len(idx), self.n_classes if self.task == "classify" else 2), np.float32)
        c = self.cand[idx] if self.cand is not None else None
        for sel, b in _batches(self.rows, self.row_idx[idx], c, self.width, self.buckets, self.tb, 256):
            p = np.asarray(keras.ops.convert_to_numpy(self.model.predict_on_batch(b)), np.float32)
            out[sel] = p if self.task == "classify" else np.concatenate([1 - p, p], axis=1)
        return out

    def valid_metrics(self, prob):
        return classification_metrics(self.y[self.valid], prob, max(self.n_classes, 2))

    def callbacks(self, validate: Callable[[], np.ndarray], phase: str, line) -> list:
        """Validation, the NaN guard, early stopping on the validation log-loss (without
        validation users the latest epoch is best) keeping the whole model's weights, also while
        only its head trains, and the history."""
        from ptum.training.callbacks import History, KeepBest, NaNGuard, ValidationMetrics

        history, best, model = self.history, self.best, self.model
        return [ValidationMetrics((lambda _: self.valid_metrics(validate())) if len(self.valid) else None),
                NaNGuard(what="fine-tuning loss", epoch_number=lambda _: len(history) + 1),
                KeepBest("val_log_loss", best, self.cfg.patience, lower_is_better=True, min_delta=1e-6,
                         keep=lambda _: best.update(weights=[np.array(v) for v in model.get_weights()],
                                                    phase=phase),
                         missing=lambda: -(len(history) + 1)),
                History(history, phase, line)]

    def say_if_stopped(self, phase: str, planned: int) -> None:
        ran = sum(1 for h in self.history if h["phase"] == phase)
        if ran < planned:
            self.log(f"{phase} phase stopped early after {ran} of {planned} epochs: the valid log-loss did not "
                     f"improve for {self.cfg.patience} epochs (finetune.patience)")

    def head_phase(self) -> None:
        """The head alone on the frozen encoder: its embeddings are fixed, so they are computed
        once and the head trains on them (a linear probe trained to convergence, then
        fine-tuning from there: LP-FT, Kumar et al. 2022)."""
        import keras

        from ptum.model.heads import HeadOnly

        cfg, train, valid, cand, encoder = self.cfg, self.train, self.valid, self.cand, self.encoder
        head = HeadOnly(self.model)
        head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=self.loss)
        cached = {"train": {"u": self.u_train},
                  "valid": {"u": embed_rows(encoder, self.rows, self.row_idx[valid], self.width, self.buckets,
                                            self.tb)}}
        if cand is not None:
            table = np.asarray(keras.ops.convert_to_numpy(encoder.item_table(training=False)), np.float32)
            cached["train"]["item"], cached["valid"]["item"] = table[cand[train]], table[cand[valid]]
        rng = np.random.default_rng([cfg.seed, 1 << 20])
        ytr, wtr = self.y[train], self.weights[train]

        def head_epoch(_):
            perm = rng.permutation(len(train))
            for s in range(0, len(perm), cfg.batch_size):
                sel = perm[s:s + cfg.batch_size]
                yield {k: v[sel] for k, v in cached["train"].items()}, self.target(ytr[sel]), wtr[sel]

        def head_valid():
            p = np.asarray(keras.ops.convert_to_numpy(head.predict_on_batch(cached["valid"])), np.float32)
            return p if self.task == "classify" else np.concatenate([1 - p, p], 1)

        def head_line(epoch, logs):
            if (epoch % 20 == 0 or head.stop_training) and "val_auc" in logs:
                self.log(f"head epoch {epoch}/{self.head_epochs}: loss {logs['loss']:.4f}  "
                         f"valid auc {logs['val_auc']:.4f}")

        _fit(head, head_epoch, self.head_epochs, self.n_batches, self.callbacks(head_valid, "head", head_line))
        self.say_if_stopped("head", self.head_epochs)

    def full_phase(self) -> None:
        """Encoder and head together, at encoder_lr_scale x the learning rate, from the best probe."""
        import time

        import keras

        from ptum.training.callbacks import epoch_line

        cfg, model, encoder = self.cfg, self.model, self.encoder
        if self.best["weights"] is not None:         # fine-tuning starts from the best probe
            model.set_weights(self.best["weights"])
        self.best["wait"] = 0                         # its own patience; the probe's best stands
        encoder.trainable = True
        # What the embedding does not read (pre-training's scoring tables) stays as it is.
        off_path = list(getattr(encoder, "off_embedding_path", lambda: [])())
        for v in off_path:
            v.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate * cfg.encoder_lr_scale), loss=self.loss)
        t0 = time.time()

        def full_epoch(e):
            for b, yb, wb in self.data.epoch(e):
                yield b, self.target(yb), wb

        def full_line(epoch, logs):
            self.log(epoch_line(epoch, cfg.epochs, time.time() - t0, loss=logs["loss"],
                                **({"valid_auc": logs["val_auc"]} if "val_auc" in logs else {})))

        _fit(model, full_epoch, cfg.epochs, self.n_batches,
             self.callbacks(lambda: self.predict(self.valid), "full", full_line))
        self.say_if_stopped("full", cfg.epochs)
        for v in off_path:
            v.trainable = True


def run(pretrained: str, data: str, labels_path: str, output: str, cfg: FinetuneConfig,
        label_column: Optional[str] = None, from_scratch: bool = False,
        log: Callable[[str], None] = print) -> dict:
    """Fine-tune a pre-trained model directory; writes `output/` (metadata.json last)."""
    ds = contracts.open_dataset(data)
    return run_rows(pretrained, ds, latest_rows(ds), labels_path, output, cfg, label_column=label_column,
                    from_scratch=from_scratch, log=log)


def load_encoder(pretrained: str, seed: int, from_scratch: bool = False):
    """(the pre-trained encoder, its metadata), or a freshly initialised encoder of the same
    config (`from_scratch`), seeded first: its dropout layers draw their seeds (from Python's
    `random`) as they are built, so seeding only later would leave full-mode fine-tuning's
    dropout masks, and so its results, different run to run."""
    import keras

    from ptum.model.saving import load_model_dir

    keras.utils.set_random_seed(seed)
    encoder, meta, _ = load_model_dir(pretrained)
    if from_scratch:
        encoder = type(encoder).from_config(encoder.get_config())
    return encoder, meta


def run_rows(pretrained: str, ds: contracts.SequenceDataset, rows: Rows, labels_path: str, output: str,
             cfg: FinetuneConfig, label_column: Optional[str] = None, from_scratch: bool = False,
             log: Callable[[str], None] = print) -> dict:
    """`run` on given rows (each user's newest history; the TFX Trainer reads them from Examples)."""
    contracts.check_output_kind(output, "finetuned", LabelError)
    with contracts.output_lock(output, "ptum finetune", LabelError):
        return _run_rows(pretrained, ds, rows, labels_path, output, cfg, label_column, from_scratch, log)


def _run_rows(pretrained, ds, rows, labels_path, output, cfg, label_column, from_scratch, log) -> dict:
    from ptum.model.saving import atomic_save_keras

    encoder, meta = load_encoder(pretrained, cfg.seed, from_scratch)
    if ds.vocab_hash != meta["vocab_hash"]:
        raise LabelError(f"{ds.root}: vocabulary {ds.vocab_hash} does not match the pre-trained model's "
                         f"{meta['vocab_hash']}")
    table = read_table(labels_path)
    cand = None
    if cfg.task == "classify":
        if not label_column:
            raise LabelError("--task classify needs --label-column")
        row_idx, classes, y, report = join_labels(rows, table, label_column, cfg.duplicate_labels)
        n_classes = len(classes)
    elif cfg.task == "ctr":
        row_idx, cand, y, report = join_impressions(rows, table, ds.read_items_vocab())
        classes, n_classes = ["0", "1"], 2
    else:
        raise LabelError(f"unknown task {cfg.task!r} (classify | ctr)")
    log(f"labels: {json.dumps(report)}")
    train, valid = _stratified_holdout(y, cfg.valid_fraction, cfg.seed)
    model, metrics, history, _ = finetune(encoder, meta, rows, cfg, row_idx, y, n_classes, train, valid,
                                          cand=cand, log=log)
    out = {"task": cfg.task, "mode": cfg.mode, "label_column": label_column, "classes": classes,
           "from_scratch": from_scratch, "pretrained": os.path.abspath(pretrained), "vocab_hash": ds.vocab_hash,
           "user_embedding": meta["user_embedding"], "max_len": meta["max_len"],
           "time_buckets": meta["time_buckets"], "length_buckets": meta["length_buckets"],
           "labels": report, "valid": metrics, "history": history, "config": cfg.model_dump()}
    with fs.staged_dir(output) as stage:    # replaces the previous output whole, or not at all
        atomic_save_keras(model, os.path.join(stage, "model.keras"))
        contracts.write_json_atomic(os.path.join(stage, "metrics.json"), metrics)
        contracts.write_json_atomic(os.path.join(stage, "metadata.json"), out)
    return out
