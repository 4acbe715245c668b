"""GloVe label vectors fitted at setup on the training split's label co-occurrence (paper Section 3.1).

The paper trains GloVe (Pennington et al. 2014) on "sentences" made of each image's positive labels. With a
sentence-wide window the co-occurrence count X_ij is the number of images positive for both i and j, i.e.
``stats.cooccurrence_counts``; the release keeps the diagonal X_ii = positives of class i (``diagonal="counts"``).
GloVe's weighted least squares is then fitted full-batch on the tiny C x C matrix (float64 numpy, deterministic for
a seed) and the vectors w + w̃ are returned. Results are cached on disk by a hash of the statistics and options.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mlgcn_lt.data.stats import LabelStats

log = logging.getLogger(__name__)

#: Bump when the fit changes, so that old cache entries are not reused.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class GloVeFit:
    """Fitted GloVe parameters (Pennington et al. 2014): word / context vectors and biases, final loss J."""

    w: np.ndarray  # (C, d)
    w_tilde: np.ndarray  # (C, d)
    b: np.ndarray  # (C,)
    b_tilde: np.ndarray  # (C,)
    loss: float  # J = Σ_{X_ij>0} f(X_ij) (w_i·w̃_j + b_i + b̃_j − log X_ij)² after the last step
    seconds: float

    @property
    def vectors(self) -> np.ndarray:
        """GloVe's default output: w + w̃."""
        return self.w + self.w_tilde

    def predicted_log_counts(self) -> np.ndarray:
        """w_i·w̃_j + b_i + b̃_j, the model of log X_ij."""
        return self.w @ self.w_tilde.T + self.b[:, None] + self.b_tilde[None, :]


def glove_counts(stats: LabelStats, diagonal: Literal["counts", "zero"] = "counts") -> np.ndarray:
    """GloVe's raw co-occurrence counts X (Section 3.1): off-diagonal = images positive for both, diagonal by option."""
    x = np.array(stats.cooccurrence_counts, dtype=np.float64, copy=True).reshape(stats.num_classes, stats.num_classes)
    counts = np.asarray(stats.counts, dtype=np.float64).reshape(stats.num_classes)
    if not (np.isfinite(x).all() and (x >= 0).all() and np.isfinite(counts).all() and (counts >= 0).all()):
        raise ValueError("label co-occurrence and counts must be finite and non-negative")
    np.fill_diagonal(x, counts if diagonal == "counts" else 0.0)
    return x


def fit_glove(
    x: np.ndarray,
    dim: int = 300,
    x_max: float = 100.0,
    alpha: float = 0.75,
    iterations: int = 1000,
    lr: float = 0.05,
    optimizer: Literal["adam", "adagrad"] = "adam",
    seed: int = 0,
) -> GloVeFit:
    """Full-batch GloVe (Pennington et al. 2014) on a co-occurrence matrix; entries with X_ij = 0 are left out.

    Initialisation as GloVe's reference code, uniform in [-0.5, 0.5) / d; rows and columns without any positive
    entry get no gradient and keep it (a small seeded random vector).
    """
    start = time.perf_counter()
    x = np.asarray(x, dtype=np.float64)
    c = x.shape[0]
    rng = np.random.default_rng(seed)
    params = [(rng.random(shape) - 0.5) / dim for shape in ((c, dim), (c, dim), (c,), (c,))]
    mask = x > 0
    log_x = np.log(np.where(mask, x, 1.0))
    weight = np.where(mask, np.minimum(x / x_max, 1.0) ** alpha, 0.0)
    if optimizer == "adagrad":  # GloVe's reference code starts the squared-gradient sums at 1
        state = [np.ones_like(p) for p in params]
    else:
        state = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def residual(w: np.ndarray, wt: np.ndarray, b: np.ndarray, bt: np.ndarray) -> np.ndarray:
        return np.where(mask, w @ wt.T + b[:, None] + bt[None, :] - log_x, 0.0)

    for step in range(1, iterations + 1):
        w, wt = params[0], params[1]
        g = 2.0 * weight * residual(*params)
        grads = [g @ wt, g.T @ w, g.sum(1), g.sum(0)]
        for k, (p, grad) in enumerate(zip(params, grads, strict=True)):
            if optimizer == "adagrad":
                state[k] += grad * grad
                p -= lr * grad / np.sqrt(state[k])
            else:
                m, v = state[k]
                m *= beta1
                m += (1 - beta1) * grad
                v *= beta2
                v += (1 - beta2) * grad * grad
                p -= lr * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
    d = residual(*params)
    loss = float((weight * d * d).sum())
    return GloVeFit(params[0], params[1], params[2], params[3], loss, time.perf_counter() - start)


class GloVeEmbedding:
    """300-d GloVe label vectors trained on the training split's label "sentences" (Section 3.1; Pennington 2014)."""

    def __init__(
        self,
        dim: int = 300,
        x_max: float = 100.0,
        alpha: float = 0.75,
        iterations: int = 1000,
        lr: float = 0.05,
        optimizer: Literal["adam", "adagrad"] = "adam",
        diagonal: Literal["counts", "zero"] = "counts",
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        if dim <= 0 or x_max <= 0 or alpha < 0 or iterations < 0 or lr <= 0:
            raise ValueError(
                f"GloVe needs dim > 0, x_max > 0, alpha >= 0, iterations >= 0, lr > 0; got dim={dim}, "
                f"x_max={x_max}, alpha={alpha}, iterations={iterations}, lr={lr}"
            )
        if optimizer not in ("adam", "adagrad"):
            raise ValueError(f"GloVe optimizer must be 'adam' or 'adagrad', got {optimizer!r}")
        if diagonal not in ("counts", "zero"):
            raise ValueError(f"GloVe diagonal must be 'counts' or 'zero', got {diagonal!r}")
        self.dim, self.x_max, self.alpha = int(dim), float(x_max), float(alpha)
        self.iterations, self.lr, self.optimizer = int(iterations), float(lr), str(optimizer)
        self.diagonal, self.seed = str(diagonal), int(seed)
        self.cache_dir = None if cache_dir is None else Path(os.path.expanduser(str(cache_dir)))
        self.last_fit: GloVeFit | None = None  # the fit of the last call that did not come from the cache

    def hyperparameters(self) -> dict[str, float | int | str]:
        """Everything the vectors depend on besides the statistics (not the cache location)."""
        return {
            "dim": self.dim,
            "x_max": self.x_max,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "diagonal": self.diagonal,
            "seed": self.seed,
        }

    def cache_key(self, stats: LabelStats) -> str:
        """SHA-256 of (classes, counts, co-occurrence, hyper-parameters, cache version)."""
        h = hashlib.sha256()
        meta = {"version": _CACHE_VERSION, "classes": list(stats.classes), "hp": self.hyperparameters()}
        h.update(json.dumps(meta, sort_keys=True).encode())
        for a in (stats.counts, stats.cooccurrence_counts):
            a = np.ascontiguousarray(a, dtype=np.float64)
            h.update(repr(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()[:32]

    def cache_path(self, stats: LabelStats) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"glove_{self.cache_key(stats)}.npy"

    def __call__(self, stats: LabelStats) -> np.ndarray:
        x = glove_counts(stats, self.diagonal)
        empty = [name for i, name in enumerate(stats.classes) if not (x[i].any() or x[:, i].any())]
        if empty:
            log.warning(
                "GloVe: classes without any co-occurrence (diagonal=%s) get small random label vectors: %s",
                self.diagonal,
                empty,
            )
        path = self.cache_path(stats)
        if path is not None and (cached := self._read(path, stats.num_classes)) is not None:
            log.info("GloVe: label vectors read from %s", path)
            return cached
        params = self.hyperparameters()
        del params["diagonal"]
        fit = fit_glove(x, **params)
        if not np.isfinite(fit.vectors).all():
            raise FloatingPointError(f"GloVe fit diverged (loss {fit.loss}); lower model.label_embedding.lr={self.lr}")
        self.last_fit = fit
        log.info(
            "GloVe: %d label vectors (d=%d) fitted in %.2fs, %d %s steps, final loss %.3g",
            stats.num_classes,
            self.dim,
            fit.seconds,
            self.iterations,
            self.optimizer,
            fit.loss,
        )
        vectors = fit.vectors.astype(np.float32)
        if path is not None:
            self._write(path, vectors)
        return vectors

    def _read(self, path: Path, num_classes: int) -> np.ndarray | None:
        """The cached vectors, or ``None`` when absent or unusable (then refitted and overwritten)."""
        if not path.is_file():
            return None
        try:
            vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            log.warning("GloVe: unreadable cache entry %s (%s); refitting", path, e)
            return None
        if vectors.shape != (num_classes, self.dim) or vectors.dtype != np.float32 or not np.isfinite(vectors).all():
            log.warning("GloVe: cache entry %s has shape %s / dtype %s; refitting", path, vectors.shape, vectors.dtype)
            return None
        return vectors

    @staticmethod
    def _write(path: Path, vectors: np.ndarray) -> None:
        """Write atomically: a temporary file in the same directory, then ``os.replace``."""
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, vectors, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            log.warning("GloVe: could not write cache entry %s (%s); continuing without cache", path, e)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)
