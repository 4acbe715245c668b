"""Losses. Interface: ``loss(output: ModelOutput, targets (B, C) with NaN = unknown) → LossOutput``.

Every loss is built with ``stats=`` (training label statistics; frequency-aware losses use them) and computes in
float32 whatever the training precision. Unknown labels (NaN) are masked out. One module per family:
``base`` (interface, masking, :func:`build_loss`), ``classification`` (BCE, soft margin, focal, ASL), ``balanced``
(CB, DB) and ``ride`` (diversity loss, Eq. 3-4). The names stay importable from ``mlgcn_lt.losses`` (configs and
checkpoints written before the split name ``mlgcn_lt.losses.<Loss>``).
"""

from mlgcn_lt.losses.balanced import ClassBalancedLoss, DistributionBalancedLoss
from mlgcn_lt.losses.base import (
    ApplyTo,
    ClassificationLoss,
    ExpertsReduction,
    LossOutput,
    build_loss,
    known_mask,
    masked_mean,
)
from mlgcn_lt.losses.classification import AsymmetricLoss, BCELoss, FocalLoss, SoftMarginLoss, focal_bce
from mlgcn_lt.losses.ride import RIDELoss, diversity_loss

__all__ = [
    "ApplyTo",
    "AsymmetricLoss",
    "BCELoss",
    "ClassBalancedLoss",
    "ClassificationLoss",
    "DistributionBalancedLoss",
    "ExpertsReduction",
    "FocalLoss",
    "LossOutput",
    "RIDELoss",
    "SoftMarginLoss",
    "build_loss",
    "diversity_loss",
    "focal_bce",
    "known_mask",
    "masked_mean",
]
