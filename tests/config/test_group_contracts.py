"""Contracts generated from the config groups: every ``conf/model/<group>/*.yaml`` option is checked against the
interface of its kind, so a new option is covered by adding its YAML (the samplers' contract is parametrised the
same way in ``tests/data/test_samplers.py``)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_config
from mlgcn_lt.config.groups import config_options, option_target
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.losses import build_loss
from mlgcn_lt.models.experts import ModelOutput

B, C, E, D = 4, 6, 2, 16


def _targets() -> torch.Tensor:
    t = (torch.rand(B, C, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    t[0, 0], t[1, 3] = float("nan"), float("nan")  # unknown labels
    return t


def test_groups_are_enumerated_from_the_conf_folders():
    assert {"bce", "ride", "focal"} <= set(config_options("model/loss"))
    assert option_target("model/pooling", "lse").__name__ == "LSEPool"
    with pytest.raises(ValueError, match="unknown model/loss option 'nope'; known: \\['asl'"):
        option_target("model/loss", "nope")


@pytest.mark.parametrize("name", config_options("model/loss"))
def test_loss_contract(name, stats, tmp_path, hydra_cleanup):
    """A finite float32 scalar for float32 and bf16 logits, gradients to the logits, unknown labels masked."""
    loss = build_loss(compose_config([f"model/loss={name}"], tmp_path).model.loss, stats)
    t = _targets()
    experts = (torch.randn(E, B, C, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_()
    for dtype in (torch.float32, torch.bfloat16):
        x = experts.to(dtype)
        out = loss(ModelOutput(x.mean(0), x), t)
        assert out.total.ndim == 0 and out.total.dtype == torch.float32 and torch.isfinite(out.total), dtype
        assert all(torch.isfinite(v) for v in out.terms.values())
    loss(ModelOutput(experts.mean(0), experts), t).total.backward()
    assert torch.isfinite(experts.grad).all() and experts.grad.abs().sum() > 0
    # the classification part (RIDE's diversity term does not read labels) ignores the unknown entries
    clf = getattr(loss, "classification", loss)
    x = experts.detach().clone().requires_grad_()
    clf(ModelOutput(x.mean(0), x), t).total.backward()
    assert (x.grad[:, 0, 0] == 0).all() and (x.grad[:, 1, 3] == 0).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", config_options("model/pooling"))
def test_pooling_contract(name, tmp_path, hydra_cleanup):
    pool = instantiate(compose_config([f"model/pooling={name}"], tmp_path).model.pooling)
    x = torch.randn(B, D, 5, 7, requires_grad=True)
    y = pool(x)
    assert y.shape == (B, D) and torch.isfinite(y).all()
    const = torch.full((B, D, 5, 7), 2.0)
    torch.testing.assert_close(pool(const), torch.full((B, D), 2.0))  # a constant map pools to its value
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", config_options("model/attention"))
def test_attention_contract(name, tmp_path, hydra_cleanup):
    """``(image (B, D), classifiers (C, D)) → (image' (B, D), classifiers' (C, D) or (B, C, D))``."""
    att = instantiate(compose_config([f"model/attention={name}"], tmp_path).model.attention, dim=D).eval()
    image, classifiers = torch.randn(B, D), torch.randn(C, D)
    new_image, new_classifiers = att(image, classifiers)
    assert new_image.shape == (B, D)
    assert new_classifiers.shape in ((C, D), (B, C, D))
    assert torch.isfinite(new_image).all() and torch.isfinite(new_classifiers).all()


def _model_logits(overrides: list[str], stats: LabelStats, tmp_path) -> torch.Tensor:
    cfg = compose_config(
        ["model/label_embedding=random", "model.label_embedding.dim=12", "model.num_experts=2", *overrides], tmp_path
    )
    torch.manual_seed(0)
    module = instantiate(cfg.model, stats=stats.to_dict())
    out = module.net(torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8))
    assert out.expert_logits.shape == (2, 2, C)
    out.logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.net.parameters())
    return out.logits


@pytest.mark.parametrize("name", config_options("model/head"))
def test_head_contract(name, stats, tmp_path, hydra_cleanup):
    logits = _model_logits([f"model/head={name}"], stats, tmp_path)
    assert logits.shape == (2, C) and torch.isfinite(logits).all()


@pytest.mark.slow  # builds every backbone (ResNet-101, ConvNeXt-S...): 10-20 s each here
@pytest.mark.parametrize("name", config_options("model/backbone"))
def test_backbone_contract(name, stats, tmp_path, hydra_cleanup):
    """Random init (``pretrained=none``), a tiny input: logits (B, C) and gradients into the network."""
    logits = _model_logits([f"model/backbone={name}", "model.backbone.pretrained=none"], stats, tmp_path)
    assert logits.shape == (2, C) and torch.isfinite(logits).all()
