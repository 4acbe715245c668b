"""MLGCNModule's grouped options (``decoupled``, ``scheduler.interval``) and checkpoints written with the flat names
of earlier versions (``init_from``, ``reset_heads``, ``freeze``, ``scheduler_interval``, ``on_nonfinite`` ...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from helpers import compose_config
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.evaluation.predict import load_checkpoint
from mlgcn_lt.training.decoupled import DecoupledConfig, Freeze
from mlgcn_lt.training.module import MLGCNModule, upgrade_hparams
from mlgcn_lt.training.train import plain_config

C = 5
OVERRIDES = ["model/label_embedding=random", "model.label_embedding.dim=8", "model/scheduler=cosine"]


@pytest.fixture(scope="module")
def stats() -> LabelStats:
    labels = (np.random.default_rng(0).random((40, C)) < 0.3).astype(np.float32)
    labels[:C] = np.eye(C)
    return LabelStats.from_labels(labels, [f"c{i}" for i in range(C)])


def _model(tmp_path, stats, *extra: str) -> MLGCNModule:
    cfg = plain_config(compose_config([*OVERRIDES, *extra], tmp_path))
    torch.manual_seed(0)
    return instantiate(cfg.model, stats=stats.to_dict())


def _old_checkpoint(model: MLGCNModule) -> dict:
    """What the code before the grouping wrote: flat decoupled options, scheduler_interval, the non-finite policy."""
    ckpt = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    hp = ckpt["hyper_parameters"]
    hp.update(hp.pop("decoupled"))
    hp["scheduler"].pop("interval")
    hp.update(scheduler_interval="step", on_nonfinite="skip", nonfinite_check_every_n_steps=5)
    return {**ckpt, "pytorch-lightning_version": "2.6.0"}


def test_grouped_options_compose_and_reach_the_module(tmp_path, stats, hydra_cleanup):
    model = _model(tmp_path, stats, "model.decoupled.freeze=representation", "model.scheduler.interval=step")
    assert model.decoupled == DecoupledConfig(freeze=Freeze.representation)
    assert not any(p.requires_grad for m in model.net.representation() for p in m.parameters())
    model.train()
    assert not model.net.trunk.training  # frozen BatchNorm statistics
    optim = model.configure_optimizers()
    assert optim["lr_scheduler"]["interval"] == "step"
    assert isinstance(optim["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    for old in ("model.freeze=representation", "model.scheduler_interval=step", "model.on_nonfinite=skip"):
        with pytest.raises(ConfigCompositionException):
            compose_config([*OVERRIDES, old], tmp_path)


def test_checkpoint_with_the_old_flat_names_loads_for_evaluation(tmp_path, stats, hydra_cleanup):
    model = _model(tmp_path, stats).eval()
    ckpt = _old_checkpoint(model)
    assert {"init_from", "reset_heads", "freeze", "scheduler_interval", "on_nonfinite"} <= set(ckpt["hyper_parameters"])
    path = tmp_path / "old.ckpt"
    torch.save(ckpt, path)
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = model.probs(x)
    for loaded in (load_checkpoint(path, stats.classes), MLGCNModule.load_from_checkpoint(path, map_location="cpu")):
        assert loaded.decoupled == DecoupledConfig()
        assert loaded.configure_optimizers()["lr_scheduler"]["interval"] == "step"
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval().probs(x), expected, rtol=0, atol=0)
    assert upgrade_hparams({"freeze": "representation", "scheduler": None, "scheduler_interval": "step"}) == {
        "decoupled": {"freeze": "representation"},
        "scheduler": None,
    }
