"""Losses: masking of unknown labels, where the classification term applies, the soft-margin loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlgcn_lt.losses.classification import BCELoss, SoftMarginLoss
from mlgcn_lt.models.experts import ModelOutput


def _out(e=2, b=4, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    experts = torch.randn(e, b, c, generator=g, requires_grad=True)
    return ModelOutput(experts.mean(0), experts), experts


def test_masked_bce_equals_bce_over_known_entries():
    out, _ = _out()
    t = torch.tensor([[1, 0, float("nan")], [0, 1, 1], [float("nan")] * 3, [1, 1, 0]])
    loss = BCELoss()(out, t).total
    known = ~torch.isnan(t)
    ref = F.binary_cross_entropy_with_logits(out.logits[known], t[known])
    torch.testing.assert_close(loss, ref)


def test_all_unknown_gives_zero_not_nan():
    out, experts = _out()
    loss = BCELoss()(out, torch.full((4, 3), float("nan"))).total
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(experts.grad).all()


def test_apply_to_experts_sums_or_averages_each_experts_loss():
    out, _ = _out(e=3)
    t = (torch.rand(4, 3) > 0.5).float()
    each = BCELoss(apply_to="experts")(out, t).total
    ref = sum(F.binary_cross_entropy_with_logits(out.expert_logits[i], t) for i in range(3))
    torch.testing.assert_close(each, ref)
    both = BCELoss(apply_to="both")(out, t).total
    torch.testing.assert_close(both, ref + F.binary_cross_entropy_with_logits(out.logits, t))

    mean = BCELoss(apply_to="experts", experts_reduction="mean")(out, t).total
    torch.testing.assert_close(mean, ref / 3)
    with pytest.raises(ValueError, match="experts_reduction must be sum or mean"):
        BCELoss(experts_reduction="max")


def test_half_precision_logits_are_computed_in_float32():
    out, _ = _out()
    half = ModelOutput(out.logits.detach().bfloat16(), out.expert_logits.detach().bfloat16())
    loss = BCELoss()(half, torch.ones(4, 3)).total
    assert loss.dtype == torch.float32


def test_soft_margin_matches_torch_without_unknowns_and_masks_them():
    out, _ = _out(e=1, c=5)
    t = (torch.rand(4, 5) > 0.5).float()
    ref = F.multilabel_soft_margin_loss(out.logits, t)
    torch.testing.assert_close(SoftMarginLoss()(out, t).total, ref)
    t2 = t.clone()
    t2[0, :3] = float("nan")
    got = SoftMarginLoss()(out, t2).total
    rows = [F.multilabel_soft_margin_loss(out.logits[:1, 3:], t[:1, 3:])] + [
        F.multilabel_soft_margin_loss(out.logits[i : i + 1], t[i : i + 1]) for i in range(1, 4)
    ]
    torch.testing.assert_close(got, torch.stack(rows).mean())
