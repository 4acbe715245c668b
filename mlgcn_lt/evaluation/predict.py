"""Inference from checkpoints: load and check them, predict a table, fuse the views of a study."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from mlgcn_lt.data.dataset import ImageTableDataset
from mlgcn_lt.data.images import build_transform
from mlgcn_lt.data.tables import ImageTable
from mlgcn_lt.training.module import MLGCNModule
from mlgcn_lt.utils.checkpoints import CheckpointError, read_checkpoint  # noqa: F401 (CheckpointError re-exported)

log = logging.getLogger(__name__)

Fusion = Literal["mean", "max", "view_weighted"]
#: Default view weights of ``view_weighted`` fusion: frontal views count fully, lateral ones half.
VIEW_WEIGHTS = {"PA": 1.0, "AP": 1.0, "LATERAL": 0.5, "LL": 0.5}


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the data or the other checkpoints; the message names the difference."""


def load_checkpoint(path: str | Path, classes: Sequence[str] | None = None) -> MLGCNModule:
    """Rebuild a model from its checkpoint alone (CPU), optionally checking its class list against ``classes``."""
    path = Path(path)
    read_checkpoint(path)  # a foreign, truncated or plain-state-dict file: one clear error naming it
    model = MLGCNModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    if classes is not None and list(model.classes) != list(classes):
        missing = [c for c in classes if c not in model.classes]
        extra = [c for c in model.classes if c not in classes]
        order = "" if missing or extra else " (same classes, different order)"
        raise CheckpointMismatch(
            f"{path}: trained on classes {model.classes}, but the data has {list(classes)}{order}; "
            f"missing in checkpoint {missing}, unknown to the data {extra}"
        )
    return model.eval()


def image_size_of(model: MLGCNModule, default: int | None = None) -> int:
    """The training image size stored in the checkpoint (``data_info``), else ``default``."""
    info = model.hparams.get("data_info") or {}
    size = info.get("image_size", default)
    if size is None:
        raise ValueError("the checkpoint does not record its image size: pass it explicitly")
    return int(size)


def predict_table(
    models: Sequence[MLGCNModule],
    table: ImageTable,
    image_size: int,
    *,
    tta: Sequence[str] = (),
    batch_size: int = 16,
    num_workers: int = 0,
    trainer_kwargs: Mapping | None = None,
) -> np.ndarray:
    """(N, C) probabilities for every row of ``table``, in table order, averaged over ``models`` and ``tta``."""
    dataset = ImageTableDataset(table, image_size, build_transform(None))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=True,
        **{"accelerator": "auto", "devices": 1, **(trainer_kwargs or {})},
    )
    total = np.zeros((len(table), len(table.classes)), dtype=np.float64)
    for model in models:
        model.tta = tuple(tta)
        out = trainer.predict(model, dataloaders=loader)
        index = torch.cat([b["index"] for b in out]).numpy()
        probs = torch.cat([b["probs"] for b in out]).double().numpy()
        if sorted(index.tolist()) != list(range(len(table))):
            raise RuntimeError("prediction did not return every row exactly once")
        total[index] += probs
    return total / len(models)


def fuse_by_study(
    probs: np.ndarray,
    study_ids: Sequence,
    how: Fusion = "mean",
    views: Sequence[str] | None = None,
    view_weights: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Replace each image's probabilities by its study's score (mean / max / view-weighted mean of its images)."""
    frame = pd.DataFrame(np.asarray(probs, dtype=np.float64))
    key = pd.Series(list(study_ids), name="study")
    if how == "max":
        fused = frame.groupby(key).transform("max")
    elif how == "mean":
        fused = frame.groupby(key).transform("mean")
    elif how == "view_weighted":
        if views is None:
            raise ValueError("view_weighted fusion needs the view of every image (e.g. ViewPosition)")
        table = {**VIEW_WEIGHTS, **(view_weights or {})}
        w = pd.Series([table.get(str(v).upper(), 1.0) for v in views], dtype=np.float64)
        weighted = frame.mul(w, axis=0).groupby(key).transform("sum")
        fused = weighted.div(w.groupby(key).transform("sum").clip(lower=1e-12), axis=0)
    else:
        raise ValueError(f"unknown fusion {how!r}; known: ['max', 'mean', 'view_weighted']")
    return fused.to_numpy()


def fuse_table_predictions(
    table: ImageTable, probs: np.ndarray, how: Fusion, study_column: str = "study_id", view_column: str = "ViewPosition"
) -> np.ndarray:
    """:func:`fuse_by_study` with study ids and views read from the table's metadata."""
    if study_column not in table.meta.columns:
        raise ValueError(f"{table.source}: study fusion needs a {study_column!r} column (have {list(table.meta)})")
    views = table.meta[view_column].tolist() if view_column in table.meta.columns else None
    return fuse_by_study(probs, table.meta[study_column].tolist(), how, views)
