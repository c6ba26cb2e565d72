"""ptum.training.callbacks on a tiny Keras model: what each one writes to the logs and the resumable state."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _model():
    import keras

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    return m


def _data(n=32, nan=False):
    x = np.random.default_rng(0).normal(size=(n, 3)).astype("float32")
    y = x.sum(1, keepdims=True)
    if nan:
        y[0] = np.nan
    return x, y


def test_pretraining_chain_validates_keeps_the_best_and_stops_on_patience(tmp_path):
    from ptum.training.callbacks import Checkpoint, EpochRecord, KeepBest, NaNGuard, TimeLimit, TrainClock, ValidationMetrics

    scores = [0.1, 0.3, 0.2, 0.25, 0.9, 0.9]
    state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "wait": 0, "history": [], "train_seconds": 0.0}
    saves, lines = [], []
    clock = TrainClock(state)
    model = _model()
    best_path = str(tmp_path / "best.weights.h5")
    x, y = _data()
    fitted = model.fit(x, y, batch_size=8, epochs=6, verbose=0, shuffle=False, callbacks=[
        NaNGuard(), clock, ValidationMetrics(lambda e: {"ndcg@10": scores[e], "recall@10": 2 * scores[e]}, timed=True),
        KeepBest("val_ndcg@10", state, patience=2, keep=lambda _: model.save_weights(best_path)),
        EpochRecord(state, lambda epoch, logs: lines.append(epoch)),
        Checkpoint(lambda: saves.append(dict(state)), state, clock, every_steps=0, epoch_batches=4),
        TimeLimit(0.0)])
    # Epoch 2 is the best; epochs 3 and 4 use up the patience of 2.
    assert state["best_epoch"] == 2 and state["best"] == 0.3 and state["wait"] == 2 and state["epoch"] == 4
    assert os.path.exists(tmp_path / "best.weights.h5")
    assert [h["valid_ndcg@10"] for h in state["history"]] == scores[:4]
    assert [h["valid_recall@10"] for h in state["history"]] == [2 * s for s in scores[:4]]
    assert all(h["seconds"] >= 0 and "valid_seconds" in h for h in state["history"])
    assert lines == [0, 1, 2, 3] and len(saves) == 4 and saves[-1]["epoch"] == 4
    # The validation is in Keras' own logs too (its History, TensorBoard, ...).
    assert fitted.history["val_ndcg@10"] == scores[:4]


def test_validation_every_n_epochs_leaves_the_others_alone(tmp_path):
    from ptum.training.callbacks import EpochRecord, KeepBest, TrainClock, ValidationMetrics

    state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "wait": 0, "history": [], "train_seconds": 0.0}
    x, y = _data()
    _model().fit(x, y, epochs=4, verbose=0, callbacks=[
        TrainClock(state), ValidationMetrics(lambda e: {"ndcg@10": 0.5}, every=2, timed=True),
        KeepBest("val_ndcg@10", state, patience=1, keep=lambda _: None),
        EpochRecord(state, lambda *a: None)])
    assert ["valid_ndcg@10" in h for h in state["history"]] == [False, True, False, True]
    # Epoch 4 did not beat epoch 2: patience 1 is used up there, not on the unvalidated epoch 3.
    assert state["best_epoch"] == 2 and state["epoch"] == 4


def test_time_limit_stops_after_the_epoch_that_passes_it_and_that_epoch_is_validated():
    from ptum.training.callbacks import TimeLimit, TrainClock, ValidationMetrics

    state = {"train_seconds": 100.0}   # a resumed run: 100 s were spent before it
    x, y = _data()
    limit = TimeLimit(50.0)
    validation = ValidationMetrics(lambda e: {"ndcg@10": 0.5}, every=10, final=lambda e, logs: limit.passed(logs))
    h = _model().fit(x, y, epochs=5, verbose=0, callbacks=[TrainClock(state), validation, limit])
    assert len(h.history["loss"]) == 1 and h.history["val_ndcg@10"] == [0.5]


def test_nan_guard_raises_the_callers_error_naming_the_epoch():
    from ptum.training.callbacks import NaNGuard

    class Stop(Exception):
        pass

    x, y = _data(nan=True)
    with pytest.raises(Stop, match=r"loss is nan at epoch 1: hint"):
        _model().fit(x, y, epochs=3, verbose=0, callbacks=[NaNGuard(Stop, hint=": hint")])


def test_learning_rate_decays_on_plateau_and_a_resumed_fit_keeps_it():
    import keras

    from ptum.training.callbacks import DecayOnPlateau, KeepBest, ValidationMetrics

    # Epoch 1 is the best; the later ones are not better; epoch 4 is not validated.
    scores = {0: 0.5, 1: 0.4, 2: 0.3, 4: 0.2, 5: 0.1}
    state = {"best": -1.0, "best_epoch": -1, "wait": 0}
    rates, lines = [], []

    class Rate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rates.append(round(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)), 6))

    def chain():
        return [ValidationMetrics(lambda e: {"ndcg@10": scores[e]} if e in scores else {}),
                KeepBest("val_ndcg@10", state, patience=10, keep=lambda _: None),
                DecayOnPlateau("val_ndcg@10", state, patience=2, factor=0.5, log=lines.append), Rate()]

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = _data()
    model.fit(x, y, epochs=6, verbose=0, callbacks=chain())
    # Waits 0, 1, 2 (-> halved), 2 again on the unvalidated epoch (left alone), 3, 4 (-> halved).
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    assert state["learning_rate"] == pytest.approx(0.025) and len(lines) == 2
    assert "0.1 -> 0.05 after 2 epochs without a better ndcg@10" in lines[0]
    # A fresh model and optimizer (a resumed run) start from the decayed rate in the state.
    fresh = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    fresh.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rates.clear()
    scores.clear()
    fresh.fit(x, y, epochs=1, verbose=0, callbacks=chain())
    assert rates == [0.025]


def test_restarts_reload_the_best_weights_where_patience_would_stop():
    import keras

    from ptum.training.callbacks import DecayOnPlateau, KeepBest, ValidationMetrics

    scores = [0.5, 0.4, 0.3, 0.2, 0.1, 0.6, 0.1, 0.1, 0.1, 0.1]
    state = {"best": -1.0, "best_epoch": -1, "wait": 0}
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    best, reloads, lines, rates = {}, [], [], []

    class Rate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rates.append(round(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)), 6))

    def keep(epoch):
        best["weights"] = [w.copy() for w in model.get_weights()]

    def reload():
        reloads.append(len(rates))
        model.set_weights(best["weights"])

    x, y = _data()
    fitted = model.fit(x, y, epochs=10, verbose=0, callbacks=[
        ValidationMetrics(lambda e: {"ndcg@10": scores[e]}),
        KeepBest("val_ndcg@10", state, patience=2, keep=keep),
        DecayOnPlateau("val_ndcg@10", state, patience=2, factor=0.5, log=lines.append, restarts=2, reload=reload),
        Rate()])
    # Epoch 3 would stop (2 without a better one): restart 1 at half the rate; epoch 5 would stop
    # again: restart 2; epoch 6 is a new best; epochs 7 and 8 use up the patience: no restarts left.
    assert len(fitted.history["loss"]) == 8 and state["restarts"] == 2 and state["best_epoch"] == 6
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025, 0.025]
    assert reloads == [2, 4] and "restart 2 of 2 from the best weights" in lines[1]
    assert state["learning_rate"] == pytest.approx(0.025)


def test_the_two_decay_rules_are_not_set_together():
    from ptum.config import ConfigError, PTUMConfig

    with pytest.raises(ConfigError, match="two decay rules"):
        PTUMConfig.load(None, ["train.lr_decay_patience=2", "train.lr_restarts=1"])


def test_the_average_is_validated_and_training_goes_on_from_its_own_weights():
    """SwapAverage around validation: validation sees the optimizer's moving average, exactly;
    after the epoch the model holds its own weights again, also after the fit ends (Keras
    would overwrite them with the average there: a fit in two parts must go on from its own)."""
    import keras

    from ptum.training.callbacks import SwapAverage, ValidationMetrics, keep_own_weights_after_fit

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(0.1, use_ema=True, ema_momentum=0.5), loss="mse")
    keep_own_weights_after_fit(model.optimizer)
    seen = []

    def values(variables):
        return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]

    def validate(epoch):
        seen.append((values(model.trainable_variables), values(model.optimizer._model_variables_moving_average)))
        return {"ndcg@10": 0.5}

    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
              callbacks=[SwapAverage(), ValidationMetrics(validate), SwapAverage()])
    (validated, own), after = seen[-1], values(model.trainable_variables)
    for v, o, a, avg in zip(validated, own, after, values(model.optimizer._model_variables_moving_average)):
        np.testing.assert_array_equal(a, o)       # the model's own weights, back exactly
        np.testing.assert_array_equal(avg, v)     # the average, back in the optimizer
    assert not all(np.array_equal(v, o) for v, o in zip(validated, own))
