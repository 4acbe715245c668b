"""Per-class decision thresholds: tuned on validation predictions (F1), saved and loaded as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_precision_recall_curve

from mlgcn_lt.evaluation.metrics import compute_metrics
from mlgcn_lt.utils.io import write_json


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
