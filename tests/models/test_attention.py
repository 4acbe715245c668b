"""The attention forms (Section 3.5, Figure 4) through their YAML: the paper's ``mha`` contract, and ``joint``; the
classes themselves: shapes and gradients of every form, image-dependent classifiers (joint) or not (release)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import CONF_DIR
from mlgcn_lt.config.schemas import register_schemas
from mlgcn_lt.models.attention import (
    JointSequenceAttention,
    LabelSequenceAttention,
    NoAttention,
    PerVectorAttention,
)

D, C, B = 16, 5, 3


def build(option: str) -> torch.nn.Module:
    """Instantiate ``conf/model/attention/<option>.yaml`` as the model does, with ``dim=D``, in eval mode."""
    register_schemas(CONF_DIR)
    cfg = OmegaConf.load(CONF_DIR / "model" / "attention" / f"{option}.yaml")
    cfg.pop("defaults", None)
    cfg.heads = 4
    torch.manual_seed(0)
    return instantiate(cfg, dim=D).eval()  # eval: dropout off, the outputs are deterministic


@pytest.fixture
def mha() -> torch.nn.Module:
    return build("mha")


def test_mha_maps_image_b_d_and_classifiers_c_d(mha):
    image, w = torch.randn(B, D), torch.randn(C, D)
    out_image, out_w = mha(image, w)
    assert out_image.shape == (B, D) and out_w.shape == (C, D)
    assert not torch.allclose(out_w, w)  # a real layer, not the identity


def test_mha_classifiers_do_not_depend_on_the_image_or_the_batch(mha):
    w = torch.randn(C, D)
    _, wa = mha(torch.randn(B, D), w)
    _, wb = mha(torch.randn(7, D) * 5, w)
    torch.testing.assert_close(wa, wb)


def test_mha_labels_attend_to_each_other(mha):
    w = torch.randn(C, D)
    _, before = mha(torch.randn(B, D), w)
    changed = w.clone()
    changed[0] += 3.0
    _, after = mha(torch.randn(B, D), changed)
    # every other label's output moves when label 0's input changes: one sequence of C tokens, not C alone
    for c in range(1, C):
        assert not torch.allclose(before[c], after[c], atol=1e-5), c


def test_mha_is_permutation_equivariant_over_labels(mha):
    w, perm = torch.randn(C, D), torch.tensor([3, 0, 4, 1, 2])
    _, out = mha(torch.randn(B, D), w)
    _, out_perm = mha(torch.randn(B, D), w[perm])
    torch.testing.assert_close(out_perm, out[perm])


def test_mha_maps_each_image_on_its_own_with_the_shared_layer(mha):
    w, image = torch.randn(C, D), torch.randn(B, D)
    out, _ = mha(image, w)
    for b in range(B):  # alone, or next to other images: the same output
        torch.testing.assert_close(mha(image[b : b + 1], w)[0][0], out[b])
    other = image.clone()
    other[1:] = torch.randn(B - 1, D)
    torch.testing.assert_close(mha(other, w)[0][0], out[0])
    # shared weights: a label token alone through the layer equals that vector as an image
    single_label = mha(image, w[:1])[1]
    torch.testing.assert_close(mha(w[:1], w)[0], single_label)


def test_joint_still_makes_image_dependent_per_sample_classifiers():
    joint = build("joint")
    w = torch.randn(C, D)
    _, wa = joint(torch.randn(B, D), w)
    _, wb = joint(torch.randn(B, D), w)
    assert wa.shape == (B, C, D)
    assert not torch.allclose(wa, wb)


def test_mha_and_joint_share_the_layer_layout():
    """Same parameters (``layer.*``), different wiring: the swap changes the model, not its state dict keys."""
    assert build("mha").state_dict().keys() == build("joint").state_dict().keys()


@pytest.mark.parametrize(("option", "shared"), [("mha", False), ("mha", True), ("joint", False)])
def test_the_model_runs_each_attention_form(option, shared, tiny_cfg):
    """Through the real build: the heads take (C, D) classifiers from mha and (B, C, D) from joint."""
    from mlgcn_lt.training.train import build

    cfg = tiny_cfg(f"model/attention={option}", "model.num_experts=2", f"model.share_attention={shared}")
    _, model, _ = build(cfg)
    heads = model.net.heads()
    kind = "LabelSequenceAttention" if option == "mha" else "JointSequenceAttention"
    assert heads and all(type(h.attention).__name__ == kind for h in heads)
    assert (heads[0].attention is heads[1].attention) == shared
    model.eval()
    out = model(torch.rand(3, 3, 32, 32))
    assert out.logits.shape == (3, model.stats.num_classes) and torch.isfinite(out.logits).all()


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
