"""The attention forms (Section 3.5, Figure 4) through their YAML: the paper's ``mha`` contract, and ``joint``."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import CONF_DIR
from mlgcn_lt.config.schemas import register_schemas

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
