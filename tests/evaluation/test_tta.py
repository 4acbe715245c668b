"""Test-time augmentation lives in evaluation (evaluation/predict.py): the probabilities of the formula the module
used to apply itself, through the module's plain test / predict steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_config
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.evaluation import predict
from mlgcn_lt.evaluation.predict import with_tta
from mlgcn_lt.training.train import plain_config

C = 4


def _old_formula(model, images: torch.Tensor, tta: list[str]) -> torch.Tensor:
    """``MLGCNModule.predict_probs`` before TTA moved out of the module."""
    views = [images]
    for t in tta:
        if t.startswith("scale:"):
            x = images.float() / 255.0 if images.dtype == torch.uint8 else images
            views.append(torch.nn.functional.interpolate(x, scale_factor=float(t.split(":", 1)[1]), mode="bilinear"))
    if "hflip" in tta:
        views += [v.flip(-1) for v in views]
    return torch.stack([torch.sigmoid(model(v).logits.float()) for v in views]).mean(0)


@pytest.fixture
def model(tmp_path, hydra_cleanup):
    labels = (np.random.default_rng(0).random((30, C)) < 0.4).astype(np.float32)
    labels[:C] = np.eye(C)
    stats = LabelStats.from_labels(labels, [f"c{i}" for i in range(C)])
    cfg = plain_config(compose_config(["model/label_embedding=random", "model.label_embedding.dim=8"], tmp_path))
    torch.manual_seed(0)
    return instantiate(cfg.model, stats=stats.to_dict()).eval()


@pytest.mark.parametrize("tta", [["hflip"], ["scale:0.875"], ["hflip", "scale:0.875", "scale:1.25"]])
def test_tta_gives_the_probabilities_of_the_old_formula(model, tta):
    images = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        plain = model.probs(images)
        expected = _old_formula(model, images, tta)
        got = with_tta(model, tta).probs(images)  # what test_step / predict_step compute
        batch = {"image": images, "index": torch.arange(3)}
        predicted = model.predict_step(batch, 0)["probs"]
    assert not torch.allclose(expected, plain, atol=1e-4)  # the augmentations change something
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(predicted, expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(with_tta(model, []).probs(images), plain, rtol=0, atol=0)  # unwrapped again
    assert not isinstance(model.net, predict.TestTimeAugmentation)


def test_unknown_augmentation_is_refused_when_wrapping(model):
    with pytest.raises(ValueError, match=r"unknown test-time augmentation 'vflip'; known: 'hflip', 'scale:<factor>'"):
        with_tta(model, ["vflip"])
