"""Keras callbacks for fine-tuning's `fit` (imports Keras: load lazily).

Stock callbacks are used where they keep the behaviour (TensorBoard); these stay ours:
- `ValidationMetrics` writes classification metrics on the held-out users to the epoch's logs
  (`val_auc`, `val_log_loss`, ...), for the callbacks after it;
- `NaNGuard` ends the run with an error on a non-finite loss (keras' TerminateOnNaN stops
  quietly and leaves a model behind);
- `KeepBest` is early stopping on `val_log_loss` whose best score and weights are shared
  between the runs of one fine-tuning (head, then full): the full phase keeps the probe unless it
  beats the probe's best, which keras' EarlyStopping cannot express (its `baseline` gates
  patience, not the weights kept).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional

import keras
import numpy as np


class ValidationMetrics(keras.callbacks.Callback):
    """logs["val_<name>"] for each of `metrics(predict())` (None `predict`: no validation)."""

    def __init__(self, predict: Optional[Callable[[], np.ndarray]], metrics: Callable[[np.ndarray], dict]):
        super().__init__()
        self._predict, self._metrics = predict, metrics

    def on_epoch_end(self, epoch, logs=None):
        if self._predict is None or logs is None:
            return
        for k, v in self._metrics(self._predict()).items():
            logs[f"val_{k}"] = v


class NaNGuard(keras.callbacks.Callback):
    def __init__(self, history: List[dict]):
        super().__init__()
        self._history = history

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", float("nan")))
        if not math.isfinite(loss):
            raise RuntimeError(f"fine-tuning loss is {loss} at epoch {len(self._history) + 1}")


class KeepBest(keras.callbacks.Callback):
    """Early stopping on `val_log_loss` (without validation users: the latest epoch is best)
    with `best` = {"score", "weights"} shared across fits; the weights are of `keep` (the whole
    model, also while only its head trains)."""

    def __init__(self, keep: keras.Model, best: dict, patience: int, history: List[dict]):
        super().__init__()
        self._keep, self._best, self._patience, self._history = keep, best, patience, history
        self._wait = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = logs.get("val_log_loss", -(len(self._history) + 1))
        if score < self._best["score"] - 1e-6:
            self._best.update(score=score, weights=[np.array(v) for v in self._keep.get_weights()])
            self._wait = 0
        else:
            self._wait += 1
        if self._wait >= self._patience:
            self.model.stop_training = True


class History(keras.callbacks.Callback):
    """One entry per epoch, numbered across fits: {"epoch", "phase", "loss", validation metrics}."""

    def __init__(self, history: List[dict], phase: str, line: Callable[[int, dict], None]):
        super().__init__()
        self._history, self._phase, self._line = history, phase, line

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        entry = {"epoch": len(self._history) + 1, "phase": self._phase, "loss": float(logs["loss"])}
        entry.update({k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_")})
        self._history.append(entry)
        self._line(epoch + 1, logs)
