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


def _require_stats(stats: LabelStats | None, loss: str) -> LabelStats:
    if stats is None:
        raise ValueError(f"the {loss} loss needs the training label statistics (stats=LabelStats), got None")
    return stats


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


def diversity_loss(
    expert_logits: torch.Tensor,
    distribution: Literal["softmax", "bernoulli"] = "bernoulli",
    temperature: float = 1.0,
    detach_mean: bool = False,
    max_logit: float | None = 10.0,
) -> torch.Tensor:
    """Eq. 3: L_div = −1/(n−1) · Σ_i KL(p̄ ‖ p⁽ⁱ⁾), batch mean; p̄ is the mean of the experts' distributions.

    ``bernoulli`` (default): one Bernoulli per label, KL averaged over labels, the same reduction as the element-wise
    multi-label losses. ``softmax``: p⁽ⁱ⁾ is a distribution over classes (the single-label RIDE form, the release's
    dormant code). Eq. 3 rewards disagreement without limit wherever the classification loss is flat (under BCE the
    differences between negative logits for the softmax form; easy negatives under ASL / focal for both forms): RIDE
    itself is bounded by its normalised classifiers, ML-GCN's are not, and unclipped logits run off to ±∞ (on the
    embedded default the softmax form took the loss to −9·10³ in 5 epochs while val mAP fell). So the logits the KL
    sees are clipped to ±``max_logit`` (None: no clip). Logits are divided by ``temperature`` and the result scaled
    by T² (as RIDE does). Zero for a single expert. Always float32.
    """
    if expert_logits.dim() != 3:
        raise ValueError(f"expert_logits must be (E, B, C), got {tuple(expert_logits.shape)}")
    n = expert_logits.shape[0]
    if n < 2:
        return expert_logits.float().sum() * 0.0
    z = expert_logits.float()
    if max_logit is not None:  # the bound on the reward for disagreeing (see the docstring)
        if not max_logit > 0:
            raise ValueError(f"model.loss.max_logit must be > 0 or null (no clip), got {max_logit}")
        z = z.clamp(-max_logit, max_logit)
    z = z / temperature
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
    """Eq. 4: L = L_clf + λ · T² · L_div (T = ``temperature``, 1 by default). The classification loss is any
    ClassificationLoss config: BCE on the averaged logits (the paper's row, ``ablation_ride``) or each expert's own
    loss with p̄ detached (RIDE's recipe, ``ablation_ride_individual``); λ = 0 reproduces the release, where the
    diversity term never runs."""

    def __init__(
        self,
        classification: Mapping[str, Any],
        stats: LabelStats | None = None,
        weight: float = 0.2,
        distribution: Literal["softmax", "bernoulli"] = "bernoulli",
        temperature: float = 1.0,
        detach_mean: bool = False,
        max_logit: float | None = 10.0,
    ) -> None:
        super().__init__()
        self.classification = build_loss(classification, stats)
        self.max_logit = None if max_logit is None else float(max_logit)
        self.weight, self.distribution = float(weight), distribution
        self.temperature, self.detach_mean = float(temperature), bool(detach_mean)
        diversity_loss(torch.zeros(2, 1, 2), distribution, max_logit=max_logit)  # validate the options now

    def forward(self, output: ModelOutput, targets: torch.Tensor) -> LossOutput:
        clf = self.classification(output, targets)
        div = diversity_loss(
            output.expert_logits, self.distribution, self.temperature, self.detach_mean, self.max_logit
        )
        return LossOutput(clf.total + self.weight * div, {**clf.terms, "div": div})


def build_loss(config: Mapping[str, Any], stats: LabelStats | None) -> nn.Module:
    """Instantiate a loss config, handing it the training label statistics."""
    from hydra.utils import instantiate

    return instantiate(config, stats=stats, _recursive_=False)
