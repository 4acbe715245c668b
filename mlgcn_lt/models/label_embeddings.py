"""Label vectors, the GCN's input nodes: ``random`` (fixed by seed), ``onehot``, ``file`` (.npy (C, d)).

Each is a callable ``(stats) → float32 (C, d)``, built once in setup; the vectors are then stored in the model's
state (a buffer), so a checkpoint carries them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mlgcn_lt.data.stats import LabelStats


class RandomEmbedding:
    """Gaussian vectors of unit expected norm, fixed by ``seed`` (no label semantics: a control)."""

    def __init__(self, dim: int = 300, seed: int = 0) -> None:
        if dim <= 0:
            raise ValueError(f"label embedding dim must be positive, got {dim}")
        self.dim, self.seed = int(dim), int(seed)

    def __call__(self, stats: LabelStats) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return (rng.standard_normal((stats.num_classes, self.dim)) / np.sqrt(self.dim)).astype(np.float32)


class OneHotEmbedding:
    """The identity: each class its own axis (d = C)."""

    def __call__(self, stats: LabelStats) -> np.ndarray:
        return np.eye(stats.num_classes, dtype=np.float32)


class FileEmbedding:
    """Vectors from a ``.npy`` file of shape (C, d), rows in the table's class order."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, stats: LabelStats) -> np.ndarray:
        path = Path(os.path.expanduser(self.path))
        if not path.is_file():
            raise FileNotFoundError(f"model.label_embedding.path={self.path!r}: no such .npy file")
        vectors = np.load(path, allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[0] != stats.num_classes:
            raise ValueError(
                f"{path}: label vectors have shape {vectors.shape}, expected ({stats.num_classes}, d) "
                f"for classes {list(stats.classes)}"
            )
        if not np.isfinite(vectors).all():
            raise ValueError(f"{path}: label vectors contain NaN or inf")
        return vectors.astype(np.float32)
