"""Outputs of an evaluated split: per-class table, predictions file, F1 thresholds tuned on validation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.data.tables import ImageTable
from mlgcn_lt.evaluation.thresholds import tune_thresholds  # noqa: F401
from mlgcn_lt.utils.io import atomic_write

PER_CLASS_COLUMNS = ("class", "group", "train_count", "positives", "AP", "AUC", "F1")


def per_class_frame(
    metrics: Mapping[str, float], stats: LabelStats, targets: np.ndarray, thresholds: np.ndarray | None = None
) -> pd.DataFrame:
    """One row per class: group, training count, positives in the split, AP, AUC, F1 (+ tuned threshold)."""
    positives = np.nansum(np.asarray(targets, dtype=np.float64) == 1.0, axis=0).astype(int)
    rows = {
        "class": list(stats.classes),
        "group": [stats.groups[c] for c in stats.classes],
        "train_count": stats.counts.astype(int).tolist(),
        "positives": positives.tolist(),
        "AP": [metrics.get(f"AP/{c}", math.nan) for c in stats.classes],
        "AUC": [metrics.get(f"AUC/{c}", math.nan) for c in stats.classes],
        "F1": [metrics.get(f"F1/{c}", math.nan) for c in stats.classes],
    }
    if thresholds is not None:
        rows["threshold"] = np.asarray(thresholds, dtype=float).tolist()
        rows["F1_tuned"] = [metrics.get(f"F1_tuned/{c}", math.nan) for c in stats.classes]
    return pd.DataFrame(rows)


def id_columns(table: ImageTable) -> list[str]:
    """Identifier columns of a table's rows (``*_id``, NIH's ``Image Index`` / ``Patient ID``), else all metadata."""
    ids = [c for c in table.meta.columns if c.lower().endswith("_id") or c in ("Image Index", "Patient ID")]
    return ids or list(table.meta.columns)


def predictions_frame(
    table: ImageTable, indices: np.ndarray, probs: np.ndarray, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per image (``indices`` into ``table``): id columns, the image path, one probability per class."""
    indices = np.asarray(indices, dtype=np.int64)
    cols = list(columns) if columns is not None else id_columns(table)
    frame = table.meta.iloc[indices][cols].reset_index(drop=True)
    frame["path"] = [table.paths[i] for i in indices]
    probs = pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=list(table.classes))
    return pd.concat([frame, probs], axis=1)


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    """Write a CSV atomically."""
    return atomic_write(path, lambda f: frame.to_csv(f, index=False))


def write_split_outputs(
    out_dir: Path,
    split: str,
    metrics: Mapping[str, Any],
    stats: LabelStats,
    table: ImageTable,
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray],
    thresholds: np.ndarray | None = None,
) -> None:
    """``per_class_<split>.csv`` and ``predictions_<split>.csv`` for one evaluated split."""
    probs, targets, indices = outputs
    unprefixed = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(f"{split}/")}
    write_csv(out_dir / f"per_class_{split}.csv", per_class_frame(unprefixed, stats, targets, thresholds))
    write_csv(out_dir / f"predictions_{split}.csv", predictions_frame(table, indices, probs))
