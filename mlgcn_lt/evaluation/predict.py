"""Inference from checkpoints: load and check them, test-time augmentation, predict a table, fuse the views of a
study."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from mlgcn_lt.data.dataset import ImageTableDataset
from mlgcn_lt.data.images import build_transform
from mlgcn_lt.data.tables import ImageTable
from mlgcn_lt.models.experts import ModelOutput
from mlgcn_lt.training.module import MLGCNModule
from mlgcn_lt.utils.checkpoints import CheckpointError, read_checkpoint  # noqa: F401 (CheckpointError re-exported)

log = logging.getLogger(__name__)

Fusion = Literal["mean", "max", "view_weighted"]
#: Default view weights of ``view_weighted`` fusion: frontal views count fully, lateral ones half.
VIEW_WEIGHTS = {"PA": 1.0, "AP": 1.0, "LATERAL": 0.5, "LL": 0.5}


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the data or the other checkpoints; the message names the difference."""


def load_checkpoint(path: str | Path, classes: Sequence[str] | None = None) -> MLGCNModule:
    """Rebuild a model from its checkpoint alone (CPU), optionally checking its class list against ``classes``.

    Checkpoints of earlier versions load too (hyper-parameters renamed: ``MLGCNModule.from_checkpoint``).
    """
    path = Path(path)
    # A foreign, truncated or plain-state-dict file: one clear error naming it.
    model = MLGCNModule.from_checkpoint(read_checkpoint(path))
    if classes is not None and list(model.classes) != list(classes):
        missing = [c for c in classes if c not in model.classes]
        extra = [c for c in model.classes if c not in classes]
        order = "" if missing or extra else " (same classes, different order)"
        raise CheckpointMismatch(
            f"{path}: trained on classes {model.classes}, but the data has {list(classes)}{order}; "
            f"missing in checkpoint {missing}, unknown to the data {extra}"
        )
    return model.eval()


TTA_CHOICES = "'hflip', 'scale:<factor>'"


def tta_views(images: torch.Tensor, tta: Sequence[str]) -> list[torch.Tensor]:
    """The inputs test-time augmentation averages over: ``images``, one bilinear resize per ``"scale:<factor>"``
    (of the 0..1 image when the input is 8-bit), and, with ``"hflip"``, the horizontal flip of each of those."""
    views = [images]
    for t in tta:
        if t.startswith("scale:"):
            x = images.float() / 255.0 if images.dtype == torch.uint8 else images
            factor = float(t.split(":", 1)[1])
            views.append(torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear"))
        elif t != "hflip":
            raise ValueError(f"unknown test-time augmentation {t!r}; known: {TTA_CHOICES}")
    if "hflip" in tta:
        views += [v.flip(-1) for v in views]
    return views


class TestTimeAugmentation(nn.Module):
    """A network whose ensemble probabilities are averaged over :func:`tta_views` of its input.

    Returns a :class:`~mlgcn_lt.models.experts.ModelOutput` like the network it wraps: ``logits`` are the logit of
    the mean probability (so the model's ``sigmoid(logits)`` gives that mean, to float32 rounding), ``expert_logits``
    the mean over the views.
    """

    def __init__(self, net: nn.Module, tta: Sequence[str]) -> None:
        super().__init__()
        self.net, self.tta = net, tuple(tta)
        tta_views(torch.zeros(1, 1, 8, 8), self.tta)  # unknown augmentations fail here, not at the first batch

    def forward(self, images: torch.Tensor) -> ModelOutput:
        outputs = [self.net(v) for v in tta_views(images, self.tta)]
        probs = torch.stack([torch.sigmoid(o.logits.float()) for o in outputs]).mean(0)
        expert_logits = torch.stack([o.expert_logits.float() for o in outputs]).mean(0)
        return ModelOutput(torch.logit(probs.double()).float(), expert_logits)

    def representation(self) -> list[nn.Module]:
        """The wrapped network's representation (a frozen one stays in eval mode: ``MLGCNModule.train``)."""
        return self.net.representation()


def with_tta(model: MLGCNModule, tta: Sequence[str]) -> MLGCNModule:
    """``model`` with its network wrapped in :class:`TestTimeAugmentation` (unwrapped again for ``tta=()``)."""
    net = model.net.net if isinstance(model.net, TestTimeAugmentation) else model.net
    model.net = TestTimeAugmentation(net, tta) if tta else net
    return model


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
        out = trainer.predict(with_tta(model, tta), dataloaders=loader)
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
