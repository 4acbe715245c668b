"""Losses. Interface: ``loss(output: ModelOutput, targets (B, C) with NaN = unknown) → LossOutput``.

Every loss is built with ``stats=`` (training label statistics; frequency-aware losses use them) and computes in
float32 whatever the training precision. Unknown labels (NaN) are masked out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.models.experts import ModelOutput

ApplyTo = Literal["ensemble", "experts", "both"]
ExpertsReduction = Literal["sum", "mean"]


class LossOutput(NamedTuple):
    """The scalar to optimise and its named terms (for logging and non-finite checks)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def known_mask(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets with NaN → 0, float mask of known entries)."""
    mask = ~torch.isnan(targets)
    return torch.where(mask, targets, torch.zeros_like(targets)).float(), mask.float()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the known entries (0 when nothing is known)."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class ClassificationLoss(nn.Module):
    """Base: an element-wise multi-label loss applied to the ensemble logits, to each expert, or both.

    ``experts_reduction``: how the experts' own losses combine, ``sum`` (Σ_i L(z⁽ⁱ⁾)) or ``mean`` (1/n Σ_i, RIDE's
    per-expert loss on the scale of one expert, so λ keeps its meaning relative to L_div).
    """

    def __init__(
        self,
        stats: LabelStats | None = None,
        apply_to: ApplyTo = "ensemble",
        experts_reduction: ExpertsReduction = "sum",
    ) -> None:
        super().__init__()
        if apply_to not in ("ensemble", "experts", "both"):
            raise ValueError(f"model.loss.apply_to must be ensemble, experts or both, got {apply_to!r}")
        if experts_reduction not in ("sum", "mean"):
            raise ValueError(f"model.loss.experts_reduction must be sum or mean, got {experts_reduction!r}")
        self.apply_to, self.experts_reduction = apply_to, experts_reduction

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-entry loss (B, C) for float32 logits and 0/1 targets."""
        raise NotImplementedError

    def reduce(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(self.elementwise(logits.float(), targets), mask)

    def forward(self, output: ModelOutput, targets: torch.Tensor) -> LossOutput:
        y, mask = known_mask(targets)
        parts = []
        if self.apply_to in ("ensemble", "both"):
            parts.append(self.reduce(output.logits, y, mask))
        if self.apply_to in ("experts", "both"):
            per_expert = torch.stack([self.reduce(e, y, mask) for e in output.expert_logits])
            parts.append(per_expert.mean() if self.experts_reduction == "mean" else per_expert.sum())
        clf = torch.stack(parts).sum()
        return LossOutput(clf, {"clf": clf})


def build_loss(config: Mapping[str, Any], stats: LabelStats | None) -> nn.Module:
    """Instantiate a loss config, handing it the training label statistics."""
    from hydra.utils import instantiate

    return instantiate(config, stats=stats, _recursive_=False)
