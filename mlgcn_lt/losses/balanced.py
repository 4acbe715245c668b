"""Frequency-aware losses: class-balanced (Cui et al. 2019) and distribution-balanced (Wu et al. 2020)."""

from __future__ import annotations

from typing import Any

import torch

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.losses.base import (
    ApplyTo,
    ClassificationLoss,
    ExpertsReduction,
)
from mlgcn_lt.losses.classification import focal_bce


def _require_stats(stats: LabelStats | None, loss: str) -> LabelStats:
    if stats is None:
        raise ValueError(f"the {loss} loss needs the training label statistics (stats=LabelStats), got None")
    return stats


class ClassBalancedLoss(ClassificationLoss):
    """Class-balanced loss, Cui et al. CVPR 2019, Sec. 4: w_c = (1 − β) / (1 − β^{n_c}), normalised to mean 1.

    Multi-label use (as the common "by class" variant): w_c multiplies every entry of column c, positive or
    negative, of a sigmoid BCE (``gamma`` = 0) or focal loss (``gamma`` > 0, the paper's CB focal). Classes with
    no positive training image count as n_c = 1.
    """

    def __init__(
        self,
        stats: LabelStats | None = None,
        apply_to: ApplyTo = "ensemble",
        experts_reduction: ExpertsReduction = "sum",
        beta: float = 0.9999,
        gamma: float = 0.0,
    ) -> None:
        super().__init__(stats, apply_to, experts_reduction)
        stats = _require_stats(stats, "class-balanced (cb)")
        if not 0.0 <= beta < 1.0 or gamma < 0:
            raise ValueError(f"class-balanced loss needs beta in [0, 1) and gamma >= 0, got {beta=}, {gamma=}")
        self.beta, self.gamma = float(beta), float(gamma)
        self.register_buffer("class_weights", self.weights(stats.counts, self.beta), persistent=False)

    @staticmethod
    def weights(counts: Any, beta: float) -> torch.Tensor:
        """(1 − β) / (1 − β^n) per class, scaled to mean 1 (float64 → float32: β^n needs the precision)."""
        n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1.0)
        w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
        return (w * len(w) / w.sum()).float()

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.class_weights * focal_bce(logits.float(), targets, self.gamma)


class DistributionBalancedLoss(ClassificationLoss):
    """DB loss, Wu et al. ECCV 2020: re-balanced weighting × focal BCE with negative-tolerant regularisation (NTR).

    Re-balancing: r_i = (1/n_i) / Σ_{j ∈ y} 1/n_j (= P^C_i / P^I, the class- over the instance-level sampling
    probability; the 1/C of both cancels), smoothed to r̂ = α + σ(β (r − μ)), for positives and negatives alike.
    An image with no known positive has P^I = 0: r = ∞, r̂ = α + 1.
    NTR: logits shifted by the class prior, z + ν_i with ν_i = (κ/λ)·logit(n_i/N), and negatives' logits and
    weights scaled: λ·(z + ν) with weight r̂/λ, i.e. (r̂/λ)·log(1 + e^{λ(z + ν)}) (the official code's form).
    ``gamma`` > 0 adds the focal modulation (1 − p_t)^γ on the regularised logits; ``balance`` is a constant factor
    (the official focal ``balance_param``).
    Defaults: the official VOC-MLT config (α 0.1, β 10, μ 0.3, λ 5, κ 0.05, γ 2, balance 2); COCO uses μ 0.2, λ 2.
    A class with no positive (or only positive) training images counts as n = 0.5 (N − 0.5).
    """

    def __init__(
        self,
        stats: LabelStats | None = None,
        apply_to: ApplyTo = "ensemble",
        experts_reduction: ExpertsReduction = "sum",
        alpha: float = 0.1,
        beta: float = 10.0,
        mu: float = 0.3,
        neg_scale: float = 5.0,
        init_bias: float = 0.05,
        gamma: float = 2.0,
        balance: float = 2.0,
    ) -> None:
        super().__init__(stats, apply_to, experts_reduction)
        stats = _require_stats(stats, "distribution-balanced (db)")
        if neg_scale <= 0 or gamma < 0:
            raise ValueError(f"DB loss needs neg_scale > 0 and gamma >= 0, got {neg_scale=}, {gamma=}")
        self.alpha, self.beta, self.mu = float(alpha), float(beta), float(mu)
        self.neg_scale, self.gamma, self.balance = float(neg_scale), float(gamma), float(balance)
        total = max(int(stats.num_images), 1)
        n = torch.as_tensor(stats.counts, dtype=torch.float64).clamp(0.5, max(total - 0.5, 0.5))
        self.register_buffer("freq_inv", (1.0 / n).float(), persistent=False)
        self.register_buffer("bias", (init_bias / neg_scale * torch.logit(n / total)).float(), persistent=False)

    def rebalance_weights(self, targets: torch.Tensor) -> torch.Tensor:
        """r̂ (B, C) for 0/1 targets."""
        repeat = (targets * self.freq_inv).sum(1, keepdim=True)  # Σ_{j ∈ y} 1/n_j = C · P^I
        r = self.freq_inv / repeat.clamp(min=torch.finfo(torch.float32).tiny)
        return self.alpha + torch.sigmoid(self.beta * (r - self.mu))

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = self.rebalance_weights(targets)
        z = logits.float() + self.bias
        z = torch.where(targets > 0, z, self.neg_scale * z)
        weight = torch.where(targets > 0, weight, weight / self.neg_scale)
        return self.balance * weight * focal_bce(z, targets, self.gamma)
