"""Every shipped trainer x precision x optimizer x clipping combination trains (issue 13, item 0): fused optimizers
with gradient clipping under mixed precision crashed Lightning at the first step; trainer=gpu / trainer=ddp set
bf16-mixed, so no GPU configuration could train. Real optimizer steps on the CPU, through the composed configs."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import MixedPrecision

from mlgcn_lt.training.guards import check_config
from mlgcn_lt.training.train import build, plain_config, train

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bf16_mixed_with_the_default_fused_adam_and_clipping_trains(tiny_cfg):
    cfg = tiny_cfg("trainer.precision=bf16-mixed", "debug=fdr")
    assert cfg.model.optimizer.fused is True and cfg.trainer.gradient_clip_val == 10.0  # the shipped defaults
    metrics = train(cfg)
    assert 0.0 <= metrics["test/mAP"] <= 1.0


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_gpu_and_ddp_trainer_configs_train_a_step_on_the_cpu(tiny_cfg, trainer):
    cfg = tiny_cfg(f"trainer={trainer}", "trainer.accelerator=cpu", "trainer.devices=1", "debug=fdr")
    assert cfg.trainer.precision == "bf16-mixed"
    metrics = train(cfg)
    saved = json.loads(Path(cfg.hydra.runtime.output_dir, "metrics.json").read_text())
    assert saved["test/mAP"] == pytest.approx(metrics["test/mAP"])


class GradientNorms(L.Callback):
    """The gradients each optimizer step applied (read after the step: clipped, and unscaled — a fused step under
    16-mixed unscales them in place; automatic optimization runs backward and clipping inside ``step``)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.max_abs: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def hook(optimizer, args, kwargs):
            grads = [p.grad.float() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if not grads or not all(torch.isfinite(g).all() for g in grads):
                return  # an overflow under 16-mixed: the scaler skipped this step
            self.norms.append(float(torch.nn.utils.get_total_norm(grads)))
            self.max_abs.append(max(float(g.abs().max()) for g in grads))

        trainer.optimizers[0].register_step_post_hook(hook)


CLIP = 1e-3  # far below the gradient norms of these steps: clipping, when on, always binds


def _fit(tiny_cfg, precision: str, optimizer: str, clip: str, *extra: str) -> GradientNorms:
    overrides = [
        f"model/optimizer={optimizer}",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "callbacks=none",
        "logger=none",
        *extra,
    ]
    if clip == "off":
        overrides.append("trainer.gradient_clip_val=0")
    else:
        overrides += [f"trainer.gradient_clip_val={CLIP}", f"trainer.gradient_clip_algorithm={clip}"]
    if precision != "16-mixed":
        overrides.append(f"trainer.precision={precision}")
    cfg = plain_config(tiny_cfg(*overrides))
    check_config(cfg)
    datamodule, model, _ = build(cfg)
    norms = GradientNorms()
    kwargs: dict = {"callbacks": [norms], "logger": False, "enable_checkpointing": False}
    if precision == "16-mixed":  # Lightning swaps 16-mixed for bf16-mixed on a CPU: the GPU's plugin, by hand
        kwargs |= {"precision": None, "plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]}
    trainer = instantiate(cfg.trainer, **kwargs)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 3
    return norms


@pytest.mark.parametrize("clip", ["off", "norm", "value"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "adam_unfused"])
@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed", "bf16-true"])
def test_every_precision_optimizer_and_clipping_steps_and_clips(tiny_cfg, precision, optimizer, clip):
    extra = ["model.optimizer.fused=false"] if optimizer == "adam_unfused" else []
    norms = _fit(tiny_cfg, precision, optimizer.removesuffix("_unfused"), clip, *extra)
    assert norms.norms, "no optimizer step ran (every step skipped by the gradient scaler?)"
    if clip == "norm":
        for n in norms.norms:
            assert n <= CLIP * 1.02, norms.norms  # bf16 gradients: the bound within their precision
    elif clip == "value":
        for m in norms.max_abs:
            assert m <= CLIP * 1.01, norms.max_abs
    else:
        assert max(norms.norms) > 10 * CLIP, norms.norms  # the bound above does bind


def test_float16_weights_with_per_tensor_adam_are_refused_before_training(tiny_cfg):
    with pytest.raises(ValueError, match=r"trainer.precision=16-true.*eps=1e-08 is 0.*fused=true"):
        check_config(plain_config(tiny_cfg("trainer.precision=16-true", "model.optimizer.fused=false")))
    check_config(plain_config(tiny_cfg("trainer.precision=16-true")))  # fused Adam computes in float32: trains
    check_config(plain_config(tiny_cfg("trainer.precision=16-true", "model/optimizer=sgd")))
