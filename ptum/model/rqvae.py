"""RQ-VAE (TIGER's quantizer): an MLP autoencoder whose latent is residually quantized.

    z = encoder(x); level l picks the code nearest the residual r_l (r_1 = z, r_{l+1} = r_l - q_l);
    x_hat = decoder(z + stop_gradient(sum q_l - z))          (straight-through)
    loss = |x - x_hat|^2 + sum_l |sg(r_l) - q_l|^2 + beta |r_l - sg(q_l)|^2   (codebook + commitment)

The codebooks start from residual k-means on the initial latents (ptum.model.semantic_ids), and
after every epoch a code no item uses is restarted on the residual of a randomly drawn item at
its level (dead-code restarts). Seeded: the same inputs and seed give the same codes. The codes,
codebooks (latent space) and restarts come back as `semantic_ids.Quantized`, like residual k-means.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import keras
import numpy as np
from keras import ops

from ptum.model.semantic_ids import Quantized, dedup_fitted_first, dedup_tokens, residual_kmeans


@keras.saving.register_keras_serializable(package="ptum")
class RQVAE(keras.Model):
    def __init__(self, input_dim: int, latent_dim: int = 32, hidden: Sequence[int] = (256, 128), levels: int = 3,
                 codes: int = 256, beta: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        self.input_dim, self.latent_dim, self.hidden = int(input_dim), int(latent_dim), [int(h) for h in hidden]
        self.levels, self.codes, self.beta = int(levels), int(codes), float(beta)
        self.encoder_layers = [keras.layers.Dense(h, activation="relu", name=f"encoder_{i}")
                               for i, h in enumerate(self.hidden)] + [keras.layers.Dense(latent_dim, name="latent")]
        self.decoder_layers = [keras.layers.Dense(h, activation="relu", name=f"decoder_{i}")
                               for i, h in enumerate(reversed(self.hidden))] + [keras.layers.Dense(input_dim,
                                                                                                   name="output")]
        self.codebooks = self.add_weight(shape=(self.levels, self.codes, self.latent_dim), initializer="zeros",
                                         name="codebooks")
        self.build((None, self.input_dim))

    def build(self, input_shape):
        dim = self.input_dim
        for layer in self.encoder_layers:
            layer.build((None, dim))
            dim = layer.units
        for layer in self.decoder_layers:
            layer.build((None, dim))
            dim = layer.units
        self.built = True

    def encode(self, x):
        for layer in self.encoder_layers:
            x = layer(x)
        return x

    def decode(self, z):
        for layer in self.decoder_layers:
            z = layer(z)
        return z

    def assign_codes(self, z):
        """(codes [n, L], residuals per level, chosen codewords per level)."""
        residual, codes, residuals, chosen = z, [], [], []
        books = ops.convert_to_tensor(self.codebooks)
        for level in range(self.levels):
            book = books[level]
            dist = (ops.sum(residual * residual, axis=1, keepdims=True) - 2.0 * ops.matmul(residual, ops.transpose(book))
                    + ops.sum(book * book, axis=1)[None, :])
            idx = ops.argmin(dist, axis=1)
            q = ops.take(book, idx, axis=0)
            codes.append(idx)
            residuals.append(residual)
            chosen.append(q)
            residual = residual - q
        return ops.stack(codes, axis=1), residuals, chosen

    def call(self, x, training=False):
        z = self.encode(x)
        _, residuals, chosen = self.assign_codes(z)
        z_hat = sum(chosen)
        x_hat = self.decode(z + ops.stop_gradient(z_hat - z))
        recon = ops.mean(ops.sum(ops.square(x - x_hat), axis=1))
        rq = 0.0
        for r, q in zip(residuals, chosen):
            rq = rq + ops.mean(ops.sum(ops.square(ops.stop_gradient(r) - q), axis=1)) \
                + self.beta * ops.mean(ops.sum(ops.square(r - ops.stop_gradient(q)), axis=1))
        return {"reconstruction": recon, "quantization": rq}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return y_pred["reconstruction"] + y_pred["quantization"]

    def get_config(self):
        return {"input_dim": self.input_dim, "latent_dim": self.latent_dim, "hidden": self.hidden,
                "levels": self.levels, "codes": self.codes, "beta": self.beta, "name": self.name}


def _numpy(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def train_rqvae(x: np.ndarray, levels: int = 3, codes: int = 256, latent_dim: int = 32, epochs: int = 100,
                batch_size: int = 256, learning_rate: float = 1e-3, seed: int = 0,
                fit: Optional[np.ndarray] = None) -> Tuple[Quantized, np.ndarray, dict]:
    """(codes as Quantized [latent codebooks], the latents [n, latent_dim], {decoder error, losses}).
    `fit` (bool [n]): train on those rows only and code the others (new items) with the trained
    encoder and codebooks; their collision tokens number them after the fitted rows'."""
    keras.utils.set_random_seed(seed)
    everything = np.asarray(x, np.float32)
    fit = np.ones(len(everything), bool) if fit is None else np.asarray(fit, bool)
    x = everything[fit]
    scale = float(np.sqrt((x * x).sum(axis=1).mean())) or 1.0
    x = x / scale                      # inputs of unit mean norm: one learning rate for any content
    model = RQVAE(x.shape[1], latent_dim, levels=levels, codes=codes, name="rqvae")
    books = np.array(_initial_books(_numpy(model.encode(x)), levels, codes, seed))
    model.codebooks.assign(books)
    restarts = [0] * levels
    rng = np.random.default_rng([seed, 1])

    class Restart(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            got, residuals, _ = model.assign_codes(model.encode(x))
            got = _numpy(got)
            books = _numpy(model.codebooks)
            for level in range(levels):
                dead = np.flatnonzero(np.bincount(got[:, level], minlength=codes) == 0)
                if len(dead):
                    pick = rng.choice(len(x), len(dead), replace=len(dead) > len(x))
                    books[level, dead] = _numpy(residuals[level])[pick]
                    restarts[level] += len(dead)
            model.codebooks.assign(books)

    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    history = model.fit(x, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0, callbacks=[Restart()])
    z = _numpy(model.encode(x))
    got = _numpy(model.assign_codes(z)[0]).astype(np.int64)
    x_hat = _numpy(model.decode(sum(_numpy(model.codebooks)[lv][got[:, lv]] for lv in range(levels))))
    info = {"decoder_relative_error": float(((x - x_hat) ** 2).sum() / max(float((x * x).sum()), 1e-12)),
            "final_loss": float(history.history["loss"][-1]), "epochs": epochs, "latent_dim": latent_dim}
    books = [b.astype(np.float32) for b in _numpy(model.codebooks)]
    if fit.all():
        return Quantized(books, got, dedup_tokens(got), restarts), z, info
    z_all = np.zeros((len(everything), z.shape[1]), np.float32)
    z_all[fit] = z
    z_all[~fit] = _numpy(model.encode(everything[~fit] / scale))
    all_codes = np.zeros((len(everything), levels), np.int64)
    all_codes[fit] = got
    all_codes[~fit] = _numpy(model.assign_codes(z_all[~fit])[0]).astype(np.int64)
    info["new_items"] = int((~fit).sum())
    return Quantized(books, all_codes, dedup_fitted_first(all_codes, fit), restarts), z_all, info


def _initial_books(z: np.ndarray, levels: int, codes: int, seed: int) -> list:
    """Residual k-means on the initial latents, each level padded to `codes` with drawn points."""
    q = residual_kmeans(z, levels=levels, codes=codes, seed=seed, iters=20)
    rng = np.random.default_rng([seed, 2])
    out = []
    for book in q.codebooks:
        if len(book) < codes:
            book = np.concatenate([book, z[rng.choice(len(z), codes - len(book))]])
        out.append(book.astype(np.float32))
    return out
