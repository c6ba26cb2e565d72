"""Keras callbacks for pre-training's and fine-tuning's `fit` (imports Keras: load lazily).

Stock callbacks are used where they keep the behaviour (TensorBoard); these stay ours:
- `NaNGuard` ends the run with an error on a non-finite loss (keras' TerminateOnNaN stops
  quietly and leaves a model behind);
- `ValidationMetrics` writes metrics on held-out users to the epoch's logs (`val_auc`,
  `val_log_loss`, ... in fine-tuning; `val_ndcg@10`, `val_recall@10` in pre-training), for the
  callbacks after it (and TensorBoard);
- `KeepBest` is early stopping whose best and patience live in a state that outlives one fit:
  fine-tuning's head and full phases share it (the full phase keeps the probe unless it beats
  the probe's best, which keras' EarlyStopping cannot express: its `baseline` gates patience, not
  the weights kept), and pre-training saves it with every checkpoint (keras' EarlyStopping keeps
  it in memory, so a resumed run would forget it);
- pre-training: `TrainClock` (training seconds across resumed runs), `EpochRecord` (history +
  the progress line),
  `Checkpoint` (weights and state every epoch and every N batches, with the data position and
  the epoch's running loss, for a bit-identical resume after a kill), `TimeLimit` and
  `SwapAverage` (validate and keep the moving average of the weights: keras' SwapEMAWeights
  exchanges them by arithmetic, which is not exact, and only around evaluate/predict).
"""
from __future__ import annotations

import math
import time
from typing import Callable, List, Optional

import keras


class ValidationMetrics(keras.callbacks.Callback):
    """Every `every` epochs, and at the epoch `final(epoch, logs)` says is the run's last,
    logs["val_<name>"] for each of `metrics(epoch)` (None: no validation); with `timed`, also
    `val_seconds`, the time it took. (With every > 1 the last epoch's weights would otherwise
    be trained and never considered, and a run shorter than `every` would have no result.)"""

    def __init__(self, metrics: Optional[Callable[[int], dict]], every: int = 1, timed: bool = False,
                 final: Optional[Callable[[int, dict], bool]] = None):
        super().__init__()
        self._metrics, self._every, self._timed, self._final = metrics, every, timed, final

    def on_epoch_end(self, epoch, logs=None):
        if self._metrics is None or logs is None:
            return
        if (epoch + 1) % self._every and not (self._final and self._final(epoch, logs)):
            return
        t0 = time.perf_counter()
        for k, v in self._metrics(epoch).items():
            logs[f"val_{k}"] = v
        if self._timed:
            logs["val_seconds"] = time.perf_counter() - t0


class NaNGuard(keras.callbacks.Callback):
    """`error(message)` is raised on a non-finite epoch loss; `epoch_number(epoch)` names the
    epoch in it (fine-tuning numbers epochs across its two fits)."""

    def __init__(self, error: Callable[[str], Exception] = RuntimeError, what: str = "loss", hint: str = "",
                 epoch_number: Callable[[int], int] = lambda epoch: epoch + 1):
        super().__init__()
        self._error, self._what, self._hint, self._number = error, what, hint, epoch_number

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", float("nan")))
        if not math.isfinite(loss):
            raise self._error(f"{self._what} is {loss} at epoch {self._number(epoch)}{self._hint}")


class KeepBest(keras.callbacks.Callback):
    """Early stopping on `logs[key]` whose best lives in `state` ({"best", "best_epoch", "wait"}),
    so it can outlive one fit: fine-tuning's head and full phases share it (the full phase keeps
    the probe unless it beats the probe's best), pre-training saves it with every checkpoint (a
    resumed run remembers its patience). A better epoch (higher, or lower with
    `lower_is_better`, by more than `min_delta`) updates the best, resets the wait and calls
    `keep(epoch)`; `patience` epochs without one stop the fit. An epoch without the key is
    skipped, or scored `missing()` when that is given."""

    def __init__(self, key: str, state: dict, patience: int, keep: Callable[[int], None],
                 lower_is_better: bool = False, min_delta: float = 0.0,
                 missing: Optional[Callable[[], float]] = None):
        super().__init__()
        self._key, self._state, self._patience, self._keep = key, state, patience, keep
        self._lower, self._delta, self._missing = lower_is_better, min_delta, missing

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._key in logs:
            score = logs[self._key]
        elif self._missing is not None:
            score = self._missing()
        else:
            return
        state = self._state
        if score < state["best"] - self._delta if self._lower else score > state["best"] + self._delta:
            state.update(best=score, best_epoch=epoch + 1, wait=0)
            self._keep(epoch)
        else:
            state["wait"] += 1
        if state["wait"] >= self._patience:
            self.model.stop_training = True


class DecayOnPlateau(keras.callbacks.Callback):
    """Multiplies the optimizer's learning rate by `factor` when `KeepBest`'s wait (validated
    epochs without a better one, in `state`) reaches a multiple of `patience`; the rate is kept
    in `state["learning_rate"]`, so a resumed run goes on with the rate it had. Epochs without
    validation (`eval_every` > 1, no `key` in the logs) leave it alone. Runs after KeepBest.
    With `restarts` n > 0 it acts only where KeepBest stops (`patience` is then KeepBest's):
    it reloads the best weights (`reload()`), lowers the rate, resets the wait and lets the fit
    go on, at most n times (counted in `state["restarts"]`), so it never acts inside an early
    plateau that training would have climbed out of."""

    def __init__(self, key: str, state: dict, patience: int, factor: float, log: Callable[[str], None],
                 restarts: int = 0, reload: Optional[Callable[[], None]] = None):
        super().__init__()
        self._key, self._state, self._patience, self._factor, self._log = key, state, patience, factor, log
        self._restarts, self._reload = restarts, reload

    def on_train_begin(self, logs=None):
        if "learning_rate" in self._state:
            self.model.optimizer.learning_rate.assign(self._state["learning_rate"])

    def on_epoch_end(self, epoch, logs=None):
        state, wait = self._state, self._state["wait"]
        if self._key not in (logs or {}) or not wait:
            return
        if self._restarts:
            if wait < self._patience or state.get("restarts", 0) >= self._restarts:
                return
            self._reload()
            state.update(restarts=state.get("restarts", 0) + 1, wait=0)
            self.model.stop_training = False
        elif wait % self._patience:
            return
        before = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        state["learning_rate"] = after = before * self._factor
        self.model.optimizer.learning_rate.assign(after)
        again = f"; restart {state['restarts']} of {self._restarts} from the best weights" if self._restarts else ""
        self._log(f"learning rate {before:.3g} -> {after:.3g} after {wait} epochs without a better "
                  f"{self._key.removeprefix('val_')}{again}")


class SwapAverage(keras.callbacks.Callback):
    """Exchanges the model's trainable weights with the optimizer's exponential moving average
    of them (an optimizer built with `use_ema=True`), by copying, so the exchange is exact. Put
    once before validation and once after the best weights are kept: the epoch is validated and
    kept on the averaged weights, and training goes on from its own (train.ema_momentum)."""

    def on_epoch_end(self, epoch, logs=None):
        swap_average(self.model)


def swap_average(model) -> None:
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if averages is None:
        raise ValueError("SwapAverage needs an optimizer built with use_ema=True")
    for var, average in zip(model.trainable_variables, averages):
        if average is not None:
            own = keras.ops.convert_to_numpy(var.value)
            var.assign(average.value)
            average.assign(own)


def keep_own_weights_after_fit(optimizer) -> None:
    """Keras overwrites the model's weights with their average when a fit ends (use_ema); a run
    fitted in two parts (a resumed half epoch, then the rest) must go on from its own weights."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    optimizer.finalize_variable_values = lambda var_list: None


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


# ---- pre-training ----------------------------------------------------------------------------
# `state` is pre-training's resumable state (ptum.training.pretrain): a dict saved with every checkpoint.


class TrainClock(keras.callbacks.Callback):
    """Training seconds so far, earlier (resumed) runs included; at an epoch's end, before the
    callbacks after it validate, `logs["seconds"]`."""

    def __init__(self, state: dict):
        super().__init__()
        self._base, self._t0 = state["train_seconds"], time.perf_counter()

    def elapsed(self) -> float:
        return self._base + time.perf_counter() - self._t0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = self.elapsed()


# history.json's name for each validation key of the logs, in the order entries have always had.
_VALID_KEYS = (("val_window_recall@10", "valid_window_recall@10"), ("val_window_ndcg@10", "valid_window_ndcg@10"),
               ("val_seconds", "valid_seconds"), ("val_ndcg@10", "valid_ndcg@10"),
               ("val_recall@10", "valid_recall@10"))


class EpochRecord(keras.callbacks.Callback):
    """Appends the epoch to `state["history"]` ({"epoch", "loss", "seconds", "valid_*"}), moves
    state's epoch and train_seconds on, and calls `line(epoch, logs)` (the progress line)."""

    def __init__(self, state: dict, line: Callable[[int, dict], None]):
        super().__init__()
        self._state, self._line = state, line

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        entry = {"epoch": epoch + 1, "loss": float(logs["loss"]), "seconds": round(logs["seconds"], 2)}
        for key, name in _VALID_KEYS:
            if key in logs:
                entry[name] = round(logs[key], 2) if key == "val_seconds" else logs[key]
        self._state["history"].append(entry)
        self._state.update(epoch=epoch + 1, train_seconds=logs["seconds"])
        self._line(epoch, logs)


class Checkpoint(keras.callbacks.Callback):
    """`save()` (the model, then the state file that points at it) after every epoch and every
    `every_steps` batches; a batch checkpoint records the data position (`step`) and the
    epoch's running loss, which `on_epoch_begin` of a resumed run puts back (`offset`: batches
    of the epoch done before this fit), so the resumed epoch's loss is unchanged."""

    def __init__(self, save: Callable[[], None], state: dict, clock: TrainClock, every_steps: int,
                 epoch_batches: int, offset: int = 0):
        super().__init__()
        self._save, self._state, self._clock = save, state, clock
        self._every, self._epoch_batches, self._offset = every_steps, epoch_batches, offset

    def _tracker(self):
        return getattr(self.model, "_loss_tracker", None)

    def on_epoch_begin(self, epoch, logs=None):
        # Keras has just reset its running loss mean: put back the part done before the checkpoint.
        tracker = self._tracker()
        if self._offset and tracker is not None and self._state.get("loss_tracker"):
            for var, value in zip(tracker.variables, self._state["loss_tracker"]):
                var.assign(value)

    def on_train_batch_end(self, batch, logs=None):
        done = self._offset + batch + 1
        if not self._every or done % self._every or done >= self._epoch_batches:
            return
        tracker = self._tracker()
        self._state.update(step=done, train_seconds=self._clock.elapsed(),
                           loss_tracker=[float(keras.ops.convert_to_numpy(v.value)) for v in tracker.variables]
                           if tracker is not None else [])
        self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        self._state.update(step=0, loss_tracker=[])
        self._save()


class TimeLimit(keras.callbacks.Callback):
    """Stops after the epoch whose `logs["seconds"]` passes `seconds` (0: no limit)."""

    def __init__(self, seconds: float):
        super().__init__()
        self._seconds = seconds

    def passed(self, logs: Optional[dict]) -> bool:
        """Whether the epoch these logs close is past the limit (the run's last)."""
        return bool(self._seconds and (logs or {}).get("seconds", 0.0) > self._seconds)

    def on_epoch_end(self, epoch, logs=None):
        if self.passed(logs):
            self.model.stop_training = True


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_line(epoch: int, epochs: int, elapsed: float, **metrics) -> str:
    """One progress line per epoch: `epoch 3/30  loss 0.4123  valid_auc 0.7012  (12s, ETA <= 1m48s)`.
    The ETA is the bound for the remaining epochs at the mean epoch time so far (early stopping
    may end the run sooner)."""
    parts = [f"epoch {epoch:>3}/{epochs}"]
    parts += [f"{k.replace('_', ' ')} {v:.4f}" for k, v in metrics.items() if v is not None]
    eta = elapsed / max(epoch, 1) * max(epochs - epoch, 0)
    return "  ".join(parts) + f"  ({_duration(elapsed)}, ETA <= {_duration(eta)})"
