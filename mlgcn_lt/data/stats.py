"""Label statistics of the training split: per-class counts, co-occurrence, head / middle / tail groups."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The paper's split for 26 classes (Table 1): 9 head, 8 middle, 9 tail; other class counts scale alike.
DEFAULT_HEAD_FRACTION = 9 / 26
DEFAULT_TAIL_FRACTION = 9 / 26


def group_sizes(num_classes: int, head: int | None = None, tail: int | None = None) -> tuple[int, int]:
    """Number of head and tail classes: given, or 9/26 of the classes each (rounded, at least one if C >= 2)."""
    if head is None:
        head = max(1, round(num_classes * DEFAULT_HEAD_FRACTION)) if num_classes >= 2 else num_classes
    if tail is None:
        tail = max(1, round(num_classes * DEFAULT_TAIL_FRACTION)) if num_classes >= 2 else 0
    if head < 0 or tail < 0 or head + tail > num_classes:
        raise ValueError(f"data.groups: head={head} + tail={tail} must be >= 0 and fit in {num_classes} classes")
    return head, tail


@dataclass(frozen=True)
class LabelStats:
    """Statistics ML-GCN and the samplers need, computed once from the training labels (NaN = not positive)."""

    classes: tuple[str, ...]
    counts: np.ndarray  # (C,) positives per class
    cooccurrence_counts: np.ndarray  # (C, C) raw counts: images positive for both i and j; zero diagonal
    num_images: int
    groups: dict[str, str]  # class -> "head" | "middle" | "tail"

    @classmethod
    def from_labels(
        cls, labels: np.ndarray, classes: list[str] | tuple[str, ...], head: int | None = None, tail: int | None = None
    ) -> LabelStats:
        """Count positives and pairwise co-occurrence; rank classes by count (ties: table order) into groups."""
        pos = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0) == 1.0
        counts = pos.sum(0).astype(np.int64)
        co = pos.T.astype(np.int64) @ pos.astype(np.int64)
        np.fill_diagonal(co, 0)
        n_head, n_tail = group_sizes(len(classes), head, tail)
        order = np.argsort(-counts, kind="stable")
        groups: dict[str, str] = {}
        for rank, j in enumerate(order):
            groups[classes[j]] = "head" if rank < n_head else ("tail" if rank >= len(classes) - n_tail else "middle")
        empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
        if empty:
            log.warning("classes with no positive training image: %s (left out of AP means, no graph edges)", empty)
        return cls(tuple(classes), counts, co, int(pos.shape[0]), groups)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for hyper-parameters and checkpoints."""
        return {
            "classes": list(self.classes),
            "counts": self.counts.tolist(),
            "cooccurrence_counts": self.cooccurrence_counts.tolist(),
            "num_images": self.num_images,
            "groups": dict(self.groups),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelStats:
        """From :meth:`to_dict`'s form; files and checkpoints written before the rename hold ``cooccurrence``."""
        key = next((k for k in ("cooccurrence_counts", "cooccurrence") if k in d), None)
        if key is None:
            raise KeyError(f"label statistics without 'cooccurrence_counts' (keys: {sorted(d)})")
        return cls(
            classes=tuple(d["classes"]),
            counts=np.asarray(d["counts"], dtype=np.int64),
            cooccurrence_counts=np.asarray(d[key], dtype=np.int64),
            num_images=int(d["num_images"]),
            groups=dict(d["groups"]),
        )
