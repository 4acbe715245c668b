"""The diversity loss (Eq. 3) against hand computation, and RIDE (Eq. 4): classification + lambda * diversity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlgcn_lt.losses.classification import BCELoss
from mlgcn_lt.losses.ride import RIDELoss, diversity_loss
from mlgcn_lt.models.experts import ModelOutput


def _kl(p, q):
    return float((p * (np.log(p) - np.log(q))).sum())


def test_diversity_softmax_against_eq3_by_hand():
    logits = torch.tensor([[[1.0, 0.0, -1.0]], [[0.0, 2.0, 0.0]], [[0.5, 0.5, 0.5]]])  # (E=3, B=1, C=3)
    p = torch.softmax(logits[:, 0], -1).numpy().astype(np.float64)
    mean = p.mean(0)
    expected = -sum(_kl(mean, p[i]) for i in range(3)) / 2
    assert diversity_loss(logits, "softmax").item() == pytest.approx(expected, rel=1e-5)


def test_diversity_bernoulli_against_eq3_by_hand():
    logits = torch.tensor([[[1.0, -2.0]], [[0.0, 1.0]]])
    p = torch.sigmoid(logits[:, 0]).numpy().astype(np.float64)
    mean = p.mean(0)
    kl = [
        np.mean([_kl(np.array([mean[c], 1 - mean[c]]), np.array([p[i, c], 1 - p[i, c]])) for c in range(2)])
        for i in range(2)
    ]
    assert diversity_loss(logits, "bernoulli").item() == pytest.approx(-sum(kl) / 1, rel=1e-5)


@pytest.mark.parametrize("distribution", ["softmax", "bernoulli"])
def test_diversity_zero_for_identical_or_single_experts(distribution):
    one = torch.randn(1, 4, 6)
    assert diversity_loss(one, distribution).item() == 0.0
    same = one.expand(3, -1, -1)
    assert diversity_loss(same, distribution).item() == pytest.approx(0.0, abs=1e-6)
    different = torch.randn(3, 4, 6)
    assert diversity_loss(different, distribution).item() < 0  # KL >= 0, so L_div <= 0


def test_diversity_is_batch_mean_float32_and_temperature_scaled():
    a, b = torch.randn(2, 1, 5), torch.randn(2, 1, 5)
    both = torch.cat([a, b], dim=1)
    assert diversity_loss(both).item() == pytest.approx((diversity_loss(a) + diversity_loss(b)).item() / 2, rel=1e-5)
    assert diversity_loss(both.bfloat16()).dtype == torch.float32
    t = 2.0
    assert diversity_loss(both, temperature=t).item() == pytest.approx(t**2 * diversity_loss(both / t).item(), rel=1e-5)
    big = 30 * torch.randn(3, 2, 5)  # logits beyond max_logit are clipped before the KL (no gradient through them)
    torch.testing.assert_close(diversity_loss(big, max_logit=10.0), diversity_loss(big.clamp(-10, 10), max_logit=None))
    with pytest.raises(ValueError, match=r"\(E, B, C\)"):
        diversity_loss(torch.randn(4, 5))


def _fit_free_logits(classification: str, distribution: str, max_logit: float | None) -> tuple[float, float]:
    """300 Adam steps of RIDELoss on free expert logits; returns (largest |logit|, final loss)."""
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(8, 26, generator=g) < 0.1).float()
    logits = torch.randn(4, 8, 26, generator=g).requires_grad_()
    loss = RIDELoss(
        {"_target_": f"mlgcn_lt.losses.{classification}", "apply_to": "experts"},
        weight=0.2,
        distribution=distribution,
        max_logit=max_logit,
    )
    opt = torch.optim.Adam([logits], lr=0.3)
    for _ in range(300):
        out = loss(ModelOutput(logits.mean(0), logits), targets)
        opt.zero_grad()
        out.total.backward()
        opt.step()
    return logits.detach().abs().max().item(), out.total.item()


@pytest.mark.parametrize("distribution", ["bernoulli", "softmax"])
@pytest.mark.parametrize("classification", ["BCELoss", "AsymmetricLoss"])
def test_ride_loss_is_bounded_below(classification, distribution):
    """Eq. 3 rewards disagreement without limit where the classification loss is flat (BCE between negative logits
    for the softmax form; ASL / focal on easy negatives for both): unclipped, free logits run off to ±inf and the
    loss to -inf. Clipping the logits the KL sees (max_logit) bounds it; BCE + Bernoulli, the default, then ends
    where the experts agree with the labels."""
    bounded, total = _fit_free_logits(classification, distribution, max_logit=10.0)
    assert bounded < 20 and total > -2.5
    if (classification, distribution) != ("BCELoss", "bernoulli"):
        unbounded, _ = _fit_free_logits(classification, distribution, max_logit=None)
        assert unbounded > 50
    else:
        assert total == pytest.approx(0.0, abs=0.01)


def _output(e=3, b=4, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    experts = torch.randn(e, b, c, generator=g, requires_grad=True)
    return ModelOutput(experts.mean(0), experts), experts


def test_ride_total_is_clf_plus_lambda_div():
    out, experts = _output()
    t = (torch.rand(4, 5) > 0.5).float()
    loss = RIDELoss({"_target_": "mlgcn_lt.losses.classification.BCELoss", "apply_to": "experts"}, weight=0.2)(out, t)
    clf = BCELoss(apply_to="experts")(out, t).total
    torch.testing.assert_close(loss.total, clf + 0.2 * diversity_loss(out.expert_logits))
    assert set(loss.terms) == {"clf", "div"}
    loss.total.backward()
    assert torch.isfinite(experts.grad).all()
    zero = RIDELoss({"_target_": "mlgcn_lt.losses.classification.BCELoss"}, weight=0.0)(out, t)
    torch.testing.assert_close(zero.total, BCELoss()(out, t).total)
    with pytest.raises(ValueError, match="unknown diversity distribution"):
        RIDELoss({"_target_": "mlgcn_lt.losses.classification.BCELoss"}, distribution="gauss")
    with pytest.raises(ValueError, match=r"model\.loss\.max_logit must be > 0"):
        RIDELoss({"_target_": "mlgcn_lt.losses.classification.BCELoss"}, max_logit=0.0)
