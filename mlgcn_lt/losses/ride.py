"""RIDE's diversity loss (Eq. 3) and the combined RIDE loss (Eq. 4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.losses.base import (
    LossOutput,
    build_loss,
)
from mlgcn_lt.models.experts import ModelOutput


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
