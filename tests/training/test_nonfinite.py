"""callbacks.nonfinite: ``skip`` leaves the weights and the optimizer state of a NaN batch untouched, for the
optimizers the configs offer (plain, momentum, foreach, fused); ``error`` names the step and the term."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from torch import nn

from mlgcn_lt.training.callbacks.nonfinite import NonFinite
from mlgcn_lt.training.nonfinite import NonFiniteLossError
from mlgcn_lt.training.train import train

BAD = 2  # the batch (and global step) whose loss is NaN


class Tiny(L.LightningModule):
    """A linear model whose ``penalty`` term is NaN at batch ``BAD``; ``training_step`` returns loss and terms."""

    def __init__(self, make_optimizer) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 3)
        self.make_optimizer = make_optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        fit = nn.functional.mse_loss(self.layer(x), y)
        penalty = self.layer.weight.square().mean() * (float("nan") if batch_idx == BAD else 1.0)
        return {"loss": fit + penalty, "terms": {"fit": fit.detach(), "penalty": penalty.detach()}}

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


class Snapshots(L.Callback):
    """Weights and optimizer state before and after every batch."""

    def __init__(self) -> None:
        self.before: dict[int, tuple] = {}
        self.after: dict[int, tuple] = {}

    @staticmethod
    def _state(trainer, module):
        return copy.deepcopy(module.state_dict()), copy.deepcopy(trainer.optimizers[0].state_dict()["state"])

    def on_train_batch_start(self, trainer, module, batch, idx):
        self.before[idx] = self._state(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, idx):
        self.after[idx] = self._state(trainer, module)


def _loader():
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(24, 4, generator=g), torch.randn(24, 3, generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def _fit(make_optimizer, callback: NonFinite, **trainer_kwargs) -> tuple[Tiny, Snapshots]:
    model, snaps = Tiny(make_optimizer), Snapshots()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, snaps],
        **trainer_kwargs,
    )
    trainer.fit(model, train_dataloaders=_loader())
    return model, snaps


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd_momentum_fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, fused=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, foreach=False),
    "adam_foreach": lambda p: torch.optim.Adam(p, lr=0.01, foreach=True),
    "adam_fused": lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05, fused=True),
}


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.slow  # trains through fit (a tiny module, a real Lightning loop)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_skip_leaves_weights_and_optimizer_state_of_the_bad_batch_unchanged(name, caplog):
    callback = NonFinite(policy="skip")
    model, snaps = _fit(OPTIMIZERS[name], callback, gradient_clip_val=1.0)
    assert _equal(snaps.before[BAD], snaps.after[BAD])  # weights and every optimizer state tensor (step, moments)
    for idx in (BAD - 1, BAD + 1):  # the batches around it do train
        assert not _equal(snaps.before[idx][0], snaps.after[idx][0])
    assert callback.skipped == 1 and all(torch.isfinite(p).all() for p in model.parameters())
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"non-finite loss at step {BAD}" in m and "'penalty': nan" in m for m in messages)


@pytest.mark.slow  # trains through fit (a tiny module, a real Lightning loop)
@pytest.mark.parametrize("name", ["adam", "adam_fused", "adamw_fused"])
def test_skip_with_a_gradient_scaler(name):
    """16-mixed: a fused optimizer's scaler checks the gradients inside its step; with none left it would fail
    ("No inf checks were recorded"), so it gets NaN ones and skips the step itself."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    callback = NonFinite(policy="skip")
    model, snaps = _fit(OPTIMIZERS[name], callback, plugins=[plugin])
    assert _equal(snaps.before[BAD], snaps.after[BAD]) and callback.skipped == 1
    assert not _equal(snaps.before[BAD + 1][0], snaps.after[BAD + 1][0])
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow  # trains through fit (a tiny module, a real Lightning loop)
def test_error_names_the_step_and_the_term_at_the_next_check():
    callback = NonFinite(policy="error", check_every_n_steps=2)
    with pytest.raises(NonFiniteLossError, match=rf"global step {BAD} .*total, penalty is NaN or infinite"):
        _fit(OPTIMIZERS["adam"], callback)
    # checked lazily: the run got to the check after the bad step, not further
    assert callback.tracker.step is not None and int(callback.tracker.step) == BAD


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="policy='ignore'"):
        NonFinite(policy="ignore")
    with pytest.raises(ValueError, match="check_every_n_steps=0"):
        NonFinite(check_every_n_steps=0)


class _NaNAfter(torch.nn.Module):
    """Wraps a loss: its ``div`` term becomes NaN from training step ``step`` on."""

    def __init__(self, inner, step: int):
        super().__init__()
        self.inner, self.step, self.calls = inner, step, 0

    def forward(self, output, targets):
        out = self.inner(output, targets)
        if self.training:
            self.calls += 1
        if self.training and self.calls > self.step:
            div = torch.tensor(float("nan"))
            return type(out)(out.total + div, {**out.terms, "div": div})
        return out


def _with_nan_loss(monkeypatch, step: int) -> None:
    from mlgcn_lt.training import train as pipeline

    build = pipeline.build

    def patched(cfg, callbacks=None):
        dm, model, trainer = build(cfg, callbacks)
        model.loss_fn = _NaNAfter(model.loss_fn, step)
        return dm, model, trainer

    monkeypatch.setattr(pipeline, "build", patched)


@pytest.mark.slow  # trains through train() / fit
def test_nonfinite_loss_stops_naming_step_and_term(tiny_cfg, monkeypatch):
    _with_nan_loss(monkeypatch, step=3)
    cfg = tiny_cfg("trainer.max_epochs=2", "model/label_embedding=random", "trainer.log_every_n_steps=4")
    with pytest.raises(NonFiniteLossError, match=r"global step 3 .*total, div is NaN or infinite"):
        train(cfg)
    assert not (Path(cfg.hydra.runtime.output_dir) / "metrics.json").exists()


@pytest.mark.slow  # trains through train() / fit
def test_nonfinite_batches_can_be_skipped_and_counted(tiny_cfg, monkeypatch):
    _with_nan_loss(monkeypatch, step=5)
    cfg = tiny_cfg("trainer.max_epochs=1", "model/label_embedding=random", "callbacks.nonfinite.policy=skip")
    metrics = train(cfg)
    assert 0 <= metrics["test/mAP"] <= 1
    logged = pd.read_csv(Path(cfg.hydra.runtime.output_dir) / "csv" / "metrics.csv")
    # 34 training images (40 minus the 6 of the carved val split, docs/protocol.md), batch 4: 8 steps
    assert logged["train/skipped_nonfinite"].dropna().iloc[-1] == 3  # steps 6, 7, 8 of 8
