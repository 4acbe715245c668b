"""Losses. Interface: ``loss(output: ModelOutput, targets (B, C) with NaN = unknown) → LossOutput``.

Every loss is built with ``stats=`` (training label statistics; frequency-aware losses use them) and computes in
float32 whatever the training precision. Unknown labels (NaN) are masked out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.models.experts import ModelOutput

ApplyTo = Literal["ensemble", "experts", "both"]


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
    """Base: an element-wise multi-label loss applied to the ensemble logits, to each expert, or both."""

    def __init__(self, stats: LabelStats | None = None, apply_to: ApplyTo = "ensemble") -> None:
        super().__init__()
        if apply_to not in ("ensemble", "experts", "both"):
            raise ValueError(f"apply_to must be ensemble, experts or both, got {apply_to!r}")
        self.apply_to = apply_to

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
            parts.append(torch.stack([self.reduce(e, y, mask) for e in output.expert_logits]).sum())
        clf = torch.stack(parts).sum()
        return LossOutput(clf, {"clf": clf})


class BCELoss(ClassificationLoss):
    """Binary cross-entropy with logits, masked (the paper's classification loss)."""

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


class SoftMarginLoss(ClassificationLoss):
    """The release's multi-label soft-margin loss: per image the mean over its known labels, then the batch mean."""

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))

    def reduce(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_image = (self.elementwise(logits.float(), targets) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return masked_mean(per_image, (mask.sum(1) > 0).float())


def diversity_loss(
    expert_logits: torch.Tensor,
    distribution: Literal["softmax", "bernoulli"] = "softmax",
    temperature: float = 1.0,
    detach_mean: bool = False,
) -> torch.Tensor:
    """Eq. 3: L_div = −1/(n−1) · Σ_i KL(p̄ ‖ p⁽ⁱ⁾), batch mean; p̄ is the mean of the experts' distributions.

    ``softmax``: p⁽ⁱ⁾ is a distribution over classes (the RIDE form, as in the release); ``bernoulli``: one
    Bernoulli per label, KL averaged over labels. Logits are divided by ``temperature`` and the result scaled by
    T² (as RIDE does, so gradients keep their size). Zero for a single expert. Always float32.
    """
    if expert_logits.dim() != 3:
        raise ValueError(f"expert_logits must be (E, B, C), got {tuple(expert_logits.shape)}")
    n = expert_logits.shape[0]
    if n < 2:
        return expert_logits.float().sum() * 0.0
    z = expert_logits.float() / temperature
    if distribution == "softmax":
        log_p = F.log_softmax(z, dim=-1)  # (E, B, C)
        mean = log_p.exp().mean(0)
        mean = mean.detach() if detach_mean else mean
        log_mean = mean.clamp(min=1e-12).log()
        kl = (mean * (log_mean - log_p)).sum(-1)  # (E, B)
    elif distribution == "bernoulli":
        log_p, log_q = F.logsigmoid(z), F.logsigmoid(-z)  # log p, log (1 - p)
        mean = log_p.exp().mean(0)
        mean = mean.detach() if detach_mean else mean
        m1, m0 = mean.clamp(1e-12, 1.0), (1.0 - mean).clamp(1e-12, 1.0)
        kl = (mean * (m1.log() - log_p) + (1.0 - mean) * (m0.log() - log_q)).mean(-1)  # (E, B)
    else:
        raise ValueError(f"unknown diversity distribution {distribution!r}; known: ['bernoulli', 'softmax']")
    return -(temperature**2) * kl.sum(0).mean() / (n - 1)


class RIDELoss(nn.Module):
    """Eq. 4: L = L_clf + λ · L_div. The classification loss is any ClassificationLoss config (BCE on each expert
    by default); λ = 0 reproduces the release, where the diversity term never runs."""

    def __init__(
        self,
        classification: Mapping[str, Any],
        stats: LabelStats | None = None,
        weight: float = 0.2,
        distribution: Literal["softmax", "bernoulli"] = "softmax",
        temperature: float = 1.0,
        detach_mean: bool = False,
    ) -> None:
        super().__init__()
        self.classification = build_loss(classification, stats)
        self.weight, self.distribution = float(weight), distribution
        self.temperature, self.detach_mean = float(temperature), bool(detach_mean)
        diversity_loss(torch.zeros(2, 1, 2), distribution)  # validate the options now, not at step 1

    def forward(self, output: ModelOutput, targets: torch.Tensor) -> LossOutput:
        clf = self.classification(output, targets)
        div = diversity_loss(output.expert_logits, self.distribution, self.temperature, self.detach_mean)
        return LossOutput(clf.total + self.weight * div, {**clf.terms, "div": div})


def build_loss(config: Mapping[str, Any], stats: LabelStats | None) -> nn.Module:
    """Instantiate a loss config, handing it the training label statistics."""
    from hydra.utils import instantiate

    return instantiate(config, stats=stats, _recursive_=False)
