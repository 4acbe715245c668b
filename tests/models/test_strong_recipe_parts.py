"""Strong-recipe parts: focal / ASL / CB / DB losses, linear / CSRA / ML-Decoder heads, DenseNet / ConvNeXt /
EfficientNetV2 backbones. Shapes, gradients, closed forms, configs and checkpoints."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from helpers import compose_config
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.losses.balanced import ClassBalancedLoss, DistributionBalancedLoss
from mlgcn_lt.losses.base import build_loss
from mlgcn_lt.losses.classification import AsymmetricLoss, FocalLoss
from mlgcn_lt.losses.ride import diversity_loss
from mlgcn_lt.models.attention import JointSequenceAttention
from mlgcn_lt.models.backbones import build_backbone, split_backbone
from mlgcn_lt.models.experts import ModelOutput
from mlgcn_lt.models.heads import CSRAHead, GCNHead, LinearHead  # noqa: F401 (GCNHead stays importable here)
from mlgcn_lt.models.ml_decoder import MLDecoderHead, group_layout
from mlgcn_lt.models.pooling import AvgPool, MaxPool
from mlgcn_lt.training.module import MLGCNModule

C = 7  # not divisible by 2, 3 or 4 groups


def _targets(b: int = 4, seed: int = 0) -> torch.Tensor:
    t = (torch.rand(b, C, generator=torch.Generator().manual_seed(seed)) < 0.4).float()
    t[0, 0], t[1, 3] = float("nan"), float("nan")
    return t


# ------------------------------------------------------------------ losses

NEW_LOSSES = ["focal", "asl", "cb", "db"]


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_loss_configs_build_mask_unknowns_and_give_finite_gradients(name, stats, tmp_path, hydra_cleanup):
    loss = build_loss(compose_config([f"model/loss={name}"], tmp_path).model.loss, stats)
    logits = torch.randn(4, C, requires_grad=True)
    t = _targets()
    values = loss.elementwise(logits, torch.nan_to_num(t))
    assert values.shape == (4, C) and values.dtype == torch.float32 and torch.isfinite(values).all()
    assert (values >= 0).all()
    total = loss(ModelOutput(logits, logits.unsqueeze(0)), t).total
    known = ~torch.isnan(t)
    torch.testing.assert_close(total, values[known].mean())
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 0] == 0  # unknown label: no gradient


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_losses_compose_with_the_ride_diversity_term(name, stats, tmp_path, hydra_cleanup):
    cfg = compose_config(["model/loss=ride", f"model/loss@model.loss.classification={name}"], tmp_path)
    # The diversity term is added to the classification loss as that loss is configured: on the averaged logits by
    # default (the ablation_ride row changes one thing); per expert only where a row says so (winner_recipe_plus).
    assert cfg.model.loss.classification.apply_to == "ensemble"
    ride = build_loss(cfg.model.loss, stats)
    experts = torch.randn(3, 4, C, requires_grad=True)
    out = ModelOutput(experts.mean(0), experts)
    got = ride(out, _targets())
    clf = ride.classification(out, _targets()).total
    torch.testing.assert_close(got.total, clf + 0.2 * diversity_loss(experts))
    got.total.backward()
    assert torch.isfinite(experts.grad).all()


def test_focal_with_gamma_zero_is_bce_and_alpha_weights_by_hand():
    x, t = torch.randn(5, C) * 3, (torch.rand(5, C) < 0.5).float()
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(FocalLoss(gamma=0.0).elementwise(x, t), bce)
    p = torch.sigmoid(x)
    pt = torch.where(t > 0, p, 1 - p)
    at = torch.where(t > 0, 0.25, 0.75)
    torch.testing.assert_close(FocalLoss(gamma=2.0, alpha=0.25).elementwise(x, t), at * (1 - pt) ** 2 * bce)


def test_asl_without_focusing_and_clip_is_bce_and_matches_the_paper_by_hand():
    x, t = torch.randn(5, C) * 3, (torch.rand(5, C) < 0.5).float()
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0).elementwise(x, t), bce)
    p = torch.sigmoid(x).double()
    pm = (p - 0.05).clamp(min=0)
    ref = -(t * (1 - p) ** 1 * p.log() + (1 - t) * pm**4 * (1 - pm).log())
    got = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05).elementwise(x, t)
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-6)
    easy_negative = AsymmetricLoss().elementwise(torch.tensor([[-3.0]]), torch.tensor([[0.0]]))  # p < m: no loss
    assert easy_negative.item() == 0.0
    # detach_focusing: same value, gradient only through the log terms
    z = torch.tensor([[0.7]], requires_grad=True)
    AsymmetricLoss(gamma_neg=4, clip=0.0, detach_focusing=True).elementwise(z, torch.zeros(1, 1)).sum().backward()
    p0 = torch.sigmoid(torch.tensor(0.7))
    assert z.grad.item() == pytest.approx((p0**4 * p0).item(), rel=1e-5)  # p^γ · d/dz[−log(1 − p)] = p^γ · p


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_asl_is_finite_for_huge_and_bf16_logits(clip):
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=clip)
    x = torch.tensor([[1e4, -1e4, 1e4, -1e4, 80.0, -80.0, 0.0]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]])
    values = loss.elementwise(x, t)
    assert torch.isfinite(values).all() and values[0, 1].item() == pytest.approx(1e4)  # confidently wrong positive
    values.sum().backward()
    assert torch.isfinite(x.grad).all()
    half = torch.randn(4, C).bfloat16() * 30
    out = loss(ModelOutput(half, half.unsqueeze(0)), _targets()).total
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, loss(ModelOutput(half.float(), half.float().unsqueeze(0)), _targets()).total)


def test_class_balanced_weights_by_hand():
    counts, beta = np.array([1000, 100, 10]), 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = np.array(raw) * 3 / sum(raw)
    np.testing.assert_allclose(ClassBalancedLoss.weights(counts, beta).numpy(), expected, rtol=1e-6)
    st = LabelStats(("a", "b", "c"), counts, np.zeros((3, 3), int), 1100, {"a": "head", "b": "middle", "c": "tail"})
    loss = ClassBalancedLoss(st, beta=beta)
    x, t = torch.randn(2, 3), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(loss.elementwise(x, t), torch.tensor(expected).float() * bce)
    with pytest.raises(ValueError, match="needs the training label statistics"):
        ClassBalancedLoss(None)


def test_distribution_balanced_weights_and_ntr_by_hand():
    counts = np.array([10, 5, 2])
    st = LabelStats(("a", "b", "c"), counts, np.zeros((3, 3), int), 20, {"a": "head", "b": "middle", "c": "tail"})
    t = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    db = DistributionBalancedLoss(st, alpha=0.1, beta=10.0, mu=0.3)
    # image 0: sum_{j in y} 1/n_j = 1/10 + 1/5 = 0.3, so r = (1/n_i) / 0.3; image 1: r = (1/n_i) / (1/2)
    r = np.array([[1 / 3, 2 / 3, 5 / 3], [0.2, 0.4, 1.0]])
    expected = 0.1 + 1 / (1 + np.exp(-10 * (r - 0.3)))
    got = db.rebalance_weights(t).numpy()
    np.testing.assert_allclose(got[:2], expected, rtol=1e-6)
    np.testing.assert_allclose(got[2], 1.1, rtol=1e-6)  # no positive: P^I = 0, r = inf
    x = torch.tensor([[0.3, -0.5, 0.8], [1.2, -0.7, 0.1], [-0.2, 0.4, -1.0]])
    plain = DistributionBalancedLoss(st, neg_scale=1.0, init_bias=0.0, gamma=0.0, balance=1.0)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    weights = torch.tensor(np.vstack([expected, [[1.1] * 3]])).float()
    torch.testing.assert_close(plain.elementwise(x, t), weights * bce)
    # NTR, by hand: nu = (kappa / lambda) logit(n/N); negatives: (r^/lambda) log(1 + exp(lambda (z + nu)))
    ntr = DistributionBalancedLoss(st, neg_scale=5.0, init_bias=0.05, gamma=0.0, balance=1.0)
    nu = 0.05 / 5 * math.log((2 / 20) / (1 - 2 / 20))
    z = float(x[0, 2])
    assert ntr.elementwise(x, t)[0, 2].item() == pytest.approx(
        expected[0, 2] / 5 * math.log1p(math.exp(5 * (z + nu))), rel=1e-5
    )
    nu_a = 0.05 / 5 * math.log(10 / 10)
    assert ntr.elementwise(x, t)[0, 0].item() == pytest.approx(
        expected[0, 0] * math.log1p(math.exp(-(x[0, 0] + nu_a))), rel=1e-5
    )


# ------------------------------------------------------------------ heads


def test_linear_head_is_pooling_then_linear_and_takes_attention(stats):
    head = LinearHead(16, stats, None, MaxPool())
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(head(x), head.fc(x.amax(dim=(2, 3))))
    att = JointSequenceAttention(dim=16, heads=4, feedforward=32, dropout=0.0)
    out = LinearHead(16, stats, None, AvgPool(), att)(x)
    assert out.shape == (2, C) and torch.isfinite(out).all()


def test_csra_lambda_zero_is_avg_pool_logits_and_infinite_temperature_is_max(stats):
    x = torch.randn(2, 16, 3, 4)
    head = CSRAHead(16, stats, temperatures=[1.0], lam=0.0)
    w = head.classifiers[0] / head.classifiers[0].norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), x.mean(dim=(2, 3)) @ w.t())
    scores = torch.einsum("bdp,cd->bcp", x.flatten(2), w)
    inf = CSRAHead(16, stats, temperatures=[math.inf], lam=1.0)
    inf.classifiers.data.copy_(head.classifiers.data)
    torch.testing.assert_close(inf(x), scores.mean(-1) + scores.amax(-1))
    hot = CSRAHead(16, stats, temperatures=[1e4], lam=1.0)
    hot.classifiers.data.copy_(head.classifiers.data)
    torch.testing.assert_close(hot(x), inf(x), atol=1e-3, rtol=0)
    # T = 1, by hand, unnormalised, two heads summed
    two = CSRAHead(16, stats, temperatures=[1.0, math.inf], lam=0.1, normalize=False)
    s0, s1 = (torch.einsum("bdp,cd->bcp", x.flatten(2), two.classifiers[i]) for i in range(2))
    ref = s0.mean(-1) + 0.1 * (torch.softmax(s0, -1) * s0).sum(-1) + s1.mean(-1) + 0.1 * s1.amax(-1)
    torch.testing.assert_close(two(x), ref)
    with pytest.raises(ValueError, match="temperatures"):
        CSRAHead(16, stats, temperatures=[0.0])


@pytest.mark.parametrize("head", [CSRAHead, MLDecoderHead])
def test_spatial_heads_refuse_an_attention_they_cannot_apply(head, stats):
    att = JointSequenceAttention(dim=16, heads=4, feedforward=32)
    with pytest.raises(ValueError, match="model/attention=none"):
        head(16, stats, None, MaxPool(), att)


def test_ml_decoder_groups_and_label_vector_queries(stats):
    assert group_layout(26, None) == (26, 1) and group_layout(26, 4) == (4, 7) and group_layout(26, 10) == (9, 3)
    assert group_layout(200, None) == (100, 2)
    vectors = np.random.default_rng(0).standard_normal((C, 5)).astype(np.float32)
    head = MLDecoderHead(16, stats, vectors, groups=3, dim=8, heads=2, feedforward=16, queries="label_vectors").eval()
    assert (head.num_groups, head.per_group) == (3, 3)  # classes 0-2, 3-5, 6
    x = torch.randn(2, 16, 3, 3)
    out = head(x)
    assert out.shape == (2, C) and torch.isfinite(out).all()
    q = head.group_queries()
    head.label_vectors[6] += 1.0  # only the last group's query moves
    q2 = head.group_queries()
    torch.testing.assert_close(q[:2], q2[:2])
    assert not torch.allclose(q[2], q2[2])
    with torch.no_grad():
        head.group_fc[1].zero_()
    torch.testing.assert_close(head(x)[:, 3:6], head.bias[3:6].expand(2, -1))  # group 1 decodes classes 3-5
    fixed = MLDecoderHead(16, stats, None, dim=8, heads=2, feedforward=16, queries="random")
    assert "query" in dict(fixed.named_buffers()) and fixed.num_groups == C  # default: one query per class
    assert fixed(x).shape == (2, C)
    with pytest.raises(ValueError, match="needs label vectors"):
        MLDecoderHead(16, stats, None, queries="label_vectors", dim=8, heads=2)
    with pytest.raises(ValueError, match="not divisible"):
        MLDecoderHead(16, stats, None, dim=10, heads=4)


HEADS = {
    "linear": [],
    "csra": ["model.head.temperatures=[1.0,2.0,inf]"],
    "ml_decoder": ["model.head.dim=16", "model.head.heads=2", "model.head.feedforward=32", "model.head.groups=3"],
    "ml_decoder_label_vectors": ["model.head.dim=16", "model.head.heads=2", "model.head.queries=label_vectors"],
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_two_experts_with_each_head_train_and_checkpoint(head, stats, tmp_path, hydra_cleanup):
    overrides = [
        f"model/head={head.removesuffix('_label_vectors')}",
        *HEADS[head],
        "model.num_experts=2",
        "model/label_embedding=random",
        "model.label_embedding.dim=12",
    ]
    cfg = compose_config(overrides, tmp_path)
    torch.manual_seed(0)
    module = instantiate(cfg.model, stats=stats.to_dict())
    net = module.net
    out = net(torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8))
    assert out.logits.shape == (2, C) and out.expert_logits.shape == (2, 2, C)
    assert torch.isfinite(out.logits).all()
    heads = [e.head for e in net.experts]
    assert not {id(p) for p in heads[0].parameters()} & {id(p) for p in heads[1].parameters()}  # own heads
    module.loss_fn(out, _targets(2)).total.backward()
    assert not [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    # A checkpoint alone rebuilds the model (no label vectors fitted again).
    ckpt = {"hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    assert ckpt["hyper_parameters"]["restore"]["label_dim"] == (12 if head.endswith("label_vectors") else 0)
    restored = MLGCNModule(**ckpt["hyper_parameters"])
    restored.load_state_dict(module.state_dict())
    x = torch.randint(0, 256, (1, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x).logits, module.eval()(x).logits)


def test_head_choices_are_validated_at_compose_time(tmp_path, hydra_cleanup):
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["model/head=ml_decoder", "model.head.queries=word2vec"], tmp_path)
    assert "learned, random, label_vectors" in f"{e.value} {e.value.__cause__}"


# ------------------------------------------------------------------ backbones

BACKBONES = {"densenet121": (512, 1024), "convnext_tiny": (384, 768), "convnext_small": (384, 768)}
BACKBONES["efficientnet_v2_s"] = (160, 1280)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_new_backbones_split_reproduces_the_torchvision_features(name):
    ref = getattr(torchvision.models, name)(weights=None).eval()
    split = split_backbone(copy.deepcopy(ref), name)  # same weights, own modules (building twice is slow on CPU)
    assert (split.trunk_features, split.num_features) == BACKBONES[name]
    assert split.reduction == 32 and split.make_stage is None and split.name == name
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        mid = split.trunk.eval()(x)
        out = split.last_stage.eval()(mid)
        expected = ref.features(x)
    if name.startswith("densenet"):
        expected = F.relu(expected)  # DenseNet.forward applies it after features
    assert mid.shape[1] == split.trunk_features and out.shape == (1, split.num_features, 2, 2)
    torch.testing.assert_close(out, expected)


def test_densenet_loads_a_local_state_dict_with_torchvision_legacy_keys(tmp_path):
    ref = torchvision.models.densenet121(weights=None)
    legacy = {}
    for k, v in ref.state_dict().items():
        if k.startswith("classifier."):
            continue  # a backbone-only file: the classifier may be missing
        legacy[k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2.")] = v
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "d.pth")
    split = build_backbone("densenet121", str(tmp_path / "d.pth"))
    torch.testing.assert_close(split.trunk.conv0.weight, ref.features.conv0.weight)
    torch.testing.assert_close(
        split.last_stage.denseblock4.denselayer1.norm1.weight, ref.features.denseblock4.denselayer1.norm1.weight
    )
    torch.save({"features.conv0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not fit densenet121"):
        build_backbone("densenet121", str(tmp_path / "bad.pth"))
