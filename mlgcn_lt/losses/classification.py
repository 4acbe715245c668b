"""Element-wise multi-label losses: BCE, soft margin, focal (Lin et al. 2017), ASL (Ridnik et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.losses.base import (
    ApplyTo,
    ClassificationLoss,
    ExpertsReduction,
    masked_mean,
)


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


def focal_bce(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """(1 − p_t)^γ · BCE, element-wise (focal modulation, Lin et al. 2017, Eq. 4 without α); γ = 0 is BCE.

    1 − p_t = −expm1(−BCE) is exact for confident entries, and BCE-with-logits is stable for any logit.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return bce if gamma == 0 else (-torch.expm1(-bce)).pow(gamma) * bce


class FocalLoss(ClassificationLoss):
    """Sigmoid focal loss, Lin et al. ICCV 2017, Eq. 5: FL = −α_t (1 − p_t)^γ log p_t per label.

    ``alpha``: weight of positives (negatives get 1 − α); ``None`` weights both 1 (then γ = 0 is exactly BCE).
    """

    def __init__(
        self,
        stats: LabelStats | None = None,
        apply_to: ApplyTo = "ensemble",
        experts_reduction: ExpertsReduction = "sum",
        gamma: float = 2.0,
        alpha: float | None = None,
    ) -> None:
        super().__init__(stats, apply_to, experts_reduction)
        if gamma < 0 or (alpha is not None and not 0.0 <= alpha <= 1.0):
            raise ValueError(f"focal loss needs gamma >= 0 and alpha in [0, 1] or null, got {gamma=}, {alpha=}")
        self.gamma, self.alpha = float(gamma), alpha

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = focal_bce(logits.float(), targets, self.gamma)
        if self.alpha is None:
            return loss
        return (self.alpha * targets + (1.0 - self.alpha) * (1.0 - targets)) * loss


class AsymmetricLoss(ClassificationLoss):
    """ASL, Ridnik et al. ICCV 2021, Sec. 3: L+ = (1 − p)^γ+ log p, L− = p_m^γ− log(1 − p_m), p_m = max(p − m, 0).

    Always float32 (half precision underflows 1 − p and gives NaN) and in log space: log p = logsigmoid(z),
    log(1 − p_m) = log(min(σ(−z) + m, 1)) ≥ log m, so huge logits stay finite. ``detach_focusing``: no gradient
    through the focusing weights (the official training scripts' ``disable_torch_grad_focal_loss=True``); the
    paper's loss (default) differentiates through them. The paper sums over labels; here, like every loss of
    this project, it is the mean over known entries (a constant factor B·C, i.e. a learning-rate scale).
    """

    def __init__(
        self,
        stats: LabelStats | None = None,
        apply_to: ApplyTo = "ensemble",
        experts_reduction: ExpertsReduction = "sum",
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        detach_focusing: bool = False,
    ) -> None:
        super().__init__(stats, apply_to, experts_reduction)
        if gamma_neg < 0 or gamma_pos < 0 or not 0.0 <= clip < 1.0:
            raise ValueError(
                f"ASL needs gamma_neg, gamma_pos >= 0 and clip in [0, 1), got {gamma_neg=}, {gamma_pos=}, {clip=}"
            )
        self.gamma_neg, self.gamma_pos, self.clip = float(gamma_neg), float(gamma_pos), float(clip)
        self.detach_focusing = bool(detach_focusing)

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        log_pos = F.logsigmoid(z)
        if self.clip > 0:  # probability margin: negatives with p < m cost nothing
            log_neg = (torch.sigmoid(-z) + self.clip).clamp(max=1.0).log()
            p_neg = (torch.sigmoid(z) - self.clip).clamp(min=0.0)  # p_m
        else:
            log_neg, p_neg = F.logsigmoid(-z), torch.sigmoid(z)
        w_pos = torch.sigmoid(-z).pow(self.gamma_pos) if self.gamma_pos else torch.ones_like(z)
        w_neg = p_neg.pow(self.gamma_neg) if self.gamma_neg else torch.ones_like(z)
        if self.detach_focusing:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
        return -(targets * w_pos * log_pos + (1.0 - targets) * w_neg * log_neg)
