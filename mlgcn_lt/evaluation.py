"""Outputs of an evaluated split: per-class table, predictions file, F1 thresholds tuned on validation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import binary_precision_recall_curve

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.data.tables import ImageTable
from mlgcn_lt.metrics import compute_metrics
from mlgcn_lt.utils.io import atomic_write, write_json

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


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-class threshold maximising F1 on (validation) predictions; ``default`` for classes without positives."""
    p, t = torch.as_tensor(np.asarray(probs, dtype=np.float64)), torch.as_tensor(np.asarray(targets, dtype=np.float64))
    out = np.full(p.shape[1], default, dtype=np.float64)
    for c in range(p.shape[1]):
        known = ~torch.isnan(t[:, c])
        y = t[known, c].long()
        if int(y.sum()) == 0:
            continue
        precision, recall, thr = binary_precision_recall_curve(p[known, c], y)
        f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]).clamp(min=1e-12)
        out[c] = float(thr[int(torch.argmax(f1))])
    return out


def tuned_f1_metrics(
    probs: np.ndarray, targets: np.ndarray, classes: Sequence[str], thresholds: np.ndarray
) -> dict[str, float]:
    """``mF1_tuned`` and ``F1_tuned/<class>`` at the given per-class thresholds."""
    m = compute_metrics(probs, targets, classes, threshold=thresholds)
    return {"mF1_tuned": m["mF1"], **{f"F1_tuned/{c}": m[f"F1/{c}"] for c in classes}}


def save_thresholds(path: Path, classes: Sequence[str], thresholds: np.ndarray, source: str) -> Path:
    return write_json(path, {"classes": list(classes), "thresholds": list(map(float, thresholds)), "source": source})


def load_thresholds(path: str | Path, classes: Sequence[str]) -> np.ndarray:
    """Thresholds saved by :func:`save_thresholds`, checked against the class list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"thresholds file {path} is not JSON ({e}); expected the thresholds.json of a run") from None
    if not isinstance(data, dict) or "thresholds" not in data:
        raise ValueError(f"thresholds file {path}: expected a JSON object with 'classes' and 'thresholds'")
    if list(data.get("classes", [])) != list(classes):
        raise ValueError(f"{path}: thresholds are for classes {data.get('classes')}, not {list(classes)}")
    return np.asarray(data["thresholds"], dtype=np.float64)


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
