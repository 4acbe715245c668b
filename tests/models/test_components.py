"""The paper's parts: LSE pooling (Eq. 5), attention (Eq. 6), diversity loss (Eq. 3), RIDE (Eq. 4), experts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlgcn_lt.losses.classification import BCELoss, SoftMarginLoss
from mlgcn_lt.losses.ride import RIDELoss, diversity_loss
from mlgcn_lt.models.attention import (
    JointSequenceAttention,
    LabelSequenceAttention,
    NoAttention,
    PerVectorAttention,
)
from mlgcn_lt.models.backbones import build_backbone
from mlgcn_lt.models.experts import ModelOutput, MultiExpertNet
from mlgcn_lt.models.heads import GCNHead
from mlgcn_lt.models.label_embeddings import RandomEmbedding
from mlgcn_lt.models.pooling import LSEPool, MaxPool

C = 5  # classes of the `stats` fixture (tests/conftest.py)

# ------------------------------------------------------------------ LSE pooling (Eq. 5)


def test_lse_matches_eq5():
    x = torch.randn(2, 3, 4, 5)
    gamma = 0.5
    ref = (1 / gamma) * torch.log(torch.exp(gamma * x).flatten(2).mean(2))
    torch.testing.assert_close(LSEPool(gamma)(x), ref)


def test_lse_limits_mean_and_max():
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(LSEPool(1e-6)(x), x.flatten(2).mean(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(LSEPool(1e4)(x), x.flatten(2).amax(2), atol=1e-3, rtol=0)


def test_lse_is_stable_for_large_activations_and_gamma():
    x = torch.full((1, 2, 3, 3), 1e4)
    x[0, 0, 0, 0] = 2e4
    for gamma in (0.5, 10.0, 1e3):
        y = LSEPool(gamma)(x)
        assert torch.isfinite(y).all()
    y = LSEPool(1e3)(x)
    assert y[0, 1] == pytest.approx(1e4) and 1e4 < y[0, 0] <= 2e4
    bf16 = LSEPool(0.5)(torch.randn(2, 4, 3, 3).bfloat16() * 100)
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16.float()).all()


def test_lse_gradient_is_softmax_weights():
    x = torch.randn(1, 1, 2, 2, requires_grad=True)
    LSEPool(2.0)(x).sum().backward()
    torch.testing.assert_close(x.grad.flatten(), torch.softmax(2.0 * x.detach().flatten(), 0))
    with pytest.raises(ValueError, match="gamma > 0"):
        LSEPool(0.0)


# ------------------------------------------------------------------ attention (Section 3.5)


@pytest.mark.parametrize("cls", [NoAttention, LabelSequenceAttention, JointSequenceAttention, PerVectorAttention])
def test_attention_shapes_and_gradients(cls):
    torch.manual_seed(0)
    att = cls(dim=32) if cls is NoAttention else cls(dim=32, heads=8, feedforward=64, dropout=0.0)
    image = torch.randn(3, 32, requires_grad=True)
    cls_w = torch.randn(5, 32, requires_grad=True)
    img2, w2 = att(image, cls_w)
    assert img2.shape == (3, 32)
    assert w2.shape in ((5, 32), (3, 5, 32))
    ((img2.unsqueeze(1) * (w2 if w2.dim() == 3 else w2.unsqueeze(0))).sum()).backward()
    assert image.grad is not None and cls_w.grad is not None
    assert all(p.grad is not None for p in att.parameters())


def test_joint_attention_mixes_image_into_classifiers_and_release_does_not():
    torch.manual_seed(0)
    joint = JointSequenceAttention(dim=16, heads=4, feedforward=32, dropout=0.0).eval()
    release = PerVectorAttention(dim=16, heads=4, feedforward=32, dropout=0.0).eval()
    w = torch.randn(4, 16)
    a, b = torch.randn(1, 16), torch.randn(1, 16)
    _, wa = joint(a, w)
    _, wb = joint(b, w)
    assert not torch.allclose(wa, wb)  # classifiers depend on the image: real attention
    _, ra = release(a, w)
    _, rb = release(b, w)
    torch.testing.assert_close(ra, rb)  # each vector alone: classifiers independent of the image
    # shared weights: an image token alone equals a label token alone through the release layer
    torch.testing.assert_close(release(w[:1], w)[0], release(a, w)[1][:1])
    with pytest.raises(ValueError, match="not divisible"):
        JointSequenceAttention(dim=30, heads=8)


# ------------------------------------------------------------------ diversity (Eq. 3) and RIDE (Eq. 4)


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


def test_soft_margin_matches_torch_without_unknowns_and_masks_them():
    out, _ = _output(e=1)
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


# ------------------------------------------------------------------ experts: the release's narrow stage


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_narrow_experts_output_512_channels(stats, name):
    vectors = RandomEmbedding(16)(stats)
    net = MultiExpertNet(
        build_backbone(name),
        lambda d: GCNHead(d, stats, vectors, MaxPool(), hidden=(32,)),
        num_experts=2,
        init="random",
        width=512,
    )
    assert net.num_features == 512
    out = net(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))
    assert out.expert_logits.shape == (2, 1, 5)
    assert net.experts[0].stage(torch.zeros(1, build_backbone(name).trunk_features, 4, 4)).shape[1] == 512
    if name == "resnet50":
        with pytest.raises(ValueError, match="expert_init=random"):
            MultiExpertNet(build_backbone(name), lambda d: GCNHead(d, stats, vectors, MaxPool()), width=512)
