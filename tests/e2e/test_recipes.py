"""Training recipes: EMA and SWA weight averaging, decoupled classifier re-training (cRT), the recipe rows.

Each test trains resnet18 on the tiny CXR-LT data for a few steps at 32 px, through train() (the real pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import WeightAveraging

from helpers import TINY_OVERRIDES, compose_config
from mlgcn_lt.evaluation.predict import load_checkpoint
from mlgcn_lt.training import train as pipeline
from mlgcn_lt.training.callbacks.averaging import EMA, SWA, ema_update
from mlgcn_lt.training.decoupled import Stage1Mismatch, read_stage1, representation_prefixes


def _compose(root: Path, out: Path, *extra: str):
    limits = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
    # SGD without momentum: no optimizer state, so small checkpoints and cheap steps on a shared CPU.
    sgd = ["model/optimizer=sgd", "model.optimizer.momentum=0"]
    short = ["debug=limit", *limits, "trainer.num_sanity_val_steps=0", *sgd]
    return compose_config([f"data.root={root}", *TINY_OVERRIDES, *short, *extra], out)


def _params(module: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    own = dict(module.named_parameters())
    return {n: own[n].detach().clone() for n in names}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal on the keys of the smaller dict (a snapshot of a few parameters vs a whole state dict)."""
    for n in a if len(a) <= len(b) else b:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-7, msg=n)


def _differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[n], b[n]) for n in a)


class Recorder(L.Callback):
    """Snapshots of a few parameters: after each optimizer step, at each train epoch start, when validation / test
    start (after the averaging callback swapped its weights in), and at train start (with the average, if any)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.steps: list[dict[str, torch.Tensor]] = []
        self.epoch_starts: list[dict[str, torch.Tensor]] = []
        self.evals: list[tuple[str, dict[str, torch.Tensor]]] = []
        self.start: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        names = [n for n, _ in pl_module.named_parameters()]
        self.names = [names[0], names[len(names) // 2], names[-1]]  # a trunk conv, an expert stage, a head

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start["raw"] = _params(pl_module, self.names)
        self.start["optimized"] = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        avg = next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)
        if avg is not None and avg._average_model is not None:
            self.start["average"] = _params(avg._average_model.module, self.names)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_starts.append(_params(pl_module, self.names))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.steps.append(_params(pl_module, self.names))
        self.start.setdefault("training_flags", (pl_module.net.trunk.training, pl_module.net.experts[0].head.training))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tag = "sanity" if trainer.sanity_checking else trainer.state.fn.value
        self.evals.append((tag, _params(pl_module, self.names)))

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evals.append(("test", _params(pl_module, self.names)))


@pytest.fixture
def recorded(monkeypatch):
    """train() with a Recorder added to its trainer; returns the recorder and (after training) model / trainer."""
    recorder, run = Recorder(), {}
    build = pipeline.build

    def build_with_recorder(cfg, callbacks=None):
        datamodule, model, trainer = build(cfg, callbacks)
        trainer.callbacks.append(recorder)
        run.update(model=model, trainer=trainer)
        return datamodule, model, trainer

    monkeypatch.setattr(pipeline, "build", build_with_recorder)
    return recorder, run


def _state(path: Path | str, key: str = "state_dict") -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)[key]


# ------------------------------------------------------------------ EMA


@pytest.mark.slow  # trains through train() / fit
def test_ema_is_the_closed_form_average_and_what_is_evaluated(tiny_cxr_lt, tmp_path, recorded, hydra_cleanup):
    rec, _ = recorded
    ema = ["callbacks/averaging=ema", "callbacks.averaging.decay=0.5", "callbacks.averaging.update_every_n_steps=2"]
    # Every epoch saved, so that last.ckpt is the final epoch's (Lightning 2.6 writes it only with a top-k save).
    every = "callbacks.model_checkpoint.save_top_k=-1"
    cfg = _compose(tiny_cxr_lt, tmp_path / "ema", *ema, every)
    metrics = pipeline.train(cfg)
    w = rec.steps  # raw weights after optimizer steps 1..4 (2 epochs of 2)
    assert len(w) == 4
    # Updates after steps 1 and 3 (0-based 0, 2; not 1 and 3); the first one copies the weights.
    after_epoch0 = w[0]
    final = {n: torch.lerp(w[0][n], w[2][n], 0.5) for n in rec.names}
    assert _differ(after_epoch0, w[1]) and _differ(final, w[3])

    # Checkpoints: state_dict = the average, current_model_state = the raw weights.
    last = tmp_path / "ema" / "checkpoints" / "last.ckpt"
    _assert_same(_state(last), final)
    _assert_same(_state(last, "current_model_state"), w[3])
    _assert_same(dict(load_checkpoint(last).named_parameters()), final)  # eval.py / submit (weights_only)

    # Validation while fitting saw the average (its predictions tune the thresholds: no second validation); the
    # test uses the best checkpoint's average.
    fit_vals = [s for tag, s in rec.evals if tag == "fit"]
    _assert_same(fit_vals[0], after_epoch0)
    _assert_same(fit_vals[1], final)
    assert not [t for t, _ in rec.evals if t == "validate"]
    best, raw = _state(metrics["best_checkpoint"]), _state(metrics["best_checkpoint"], "current_model_state")
    for tag in ("test",):
        used = next(s for t, s in rec.evals if t == tag)
        _assert_same(used, best)
        assert _differ(used, {n: raw[n] for n in rec.names})

    # Resuming from last.ckpt restores both: the raw weights into the model, the average into the callback.
    rec.start.clear()
    resume = [f"ckpt_path={last}", "trainer.max_epochs=3", "trainer.limit_train_batches=1", "test=false"]
    pipeline.train(_compose(tiny_cxr_lt, tmp_path / "resumed", "callbacks/averaging=ema", *resume))
    _assert_same(rec.start["raw"], w[3])
    _assert_same(rec.start["average"], final)


def test_ema_schedule_and_update_rule():
    ema = EMA(decay=0.9, update_every_n_steps=3, update_starting_at_step=2)
    assert [i for i in range(10) if ema.should_update(step_idx=i)] == [2, 5, 8]
    assert not ema.should_update(epoch_idx=0)
    frozen = torch.randn(5)
    assert torch.equal(ema_update(frozen.clone(), frozen, torch.tensor(3), decay=0.9), frozen)  # a lerp: exact
    avg, cur = torch.zeros(2), torch.ones(2)
    torch.testing.assert_close(ema_update(avg, cur, torch.tensor(1), decay=0.9), torch.full((2,), 0.1))
    assert ema_update(torch.tensor(3), torch.tensor(7), torch.tensor(1), decay=0.9).item() == 7  # integer buffers
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)


# ------------------------------------------------------------------ SWA


@pytest.mark.slow  # trains through train() / fit
def test_swa_averages_epochs_and_its_final_model_is_evaluated(tiny_cxr_lt, tmp_path, recorded, hydra_cleanup):
    rec, _ = recorded
    swa = ["callbacks/averaging=swa", "callbacks.early_stopping=null", "callbacks.averaging.swa_epoch_start=2"]
    cfg = _compose(tiny_cxr_lt, tmp_path / "swa", *swa, "trainer.max_epochs=3", "trainer.limit_train_batches=1")
    metrics = pipeline.train(cfg)
    # Lightning averages the weights found at the start of epochs swa_start..swa_end (0-based 1, 2).
    s1, s2 = rec.epoch_starts[1], rec.epoch_starts[2]
    expected = {n: s1[n] + (s2[n] - s1[n]) / 2 for n in rec.names}
    assert metrics["best_checkpoint"].endswith("checkpoints/swa.ckpt") and metrics["best_epoch"] is None
    swa_state = {n: v for n, v in _state(metrics["best_checkpoint"]).items() if n in rec.names}
    torch.testing.assert_close(swa_state, expected)
    assert _differ(swa_state, rec.steps[2])  # not the raw weights after the last epoch (3 epochs of 1 step)
    for tag in ("validate", "test"):
        _assert_same(next(s for t, s in rec.evals if t == tag), swa_state)
    assert set(metrics) >= {"val/mAP", "test/mAP"}
    load_checkpoint(metrics["best_checkpoint"])  # weights_only


@pytest.mark.slow  # calls train() (it refuses the config before any step)
def test_swa_refuses_early_stopping(tiny_cxr_lt, tmp_path, hydra_cleanup):
    cfg = _compose(tiny_cxr_lt, tmp_path / "swa_es", "callbacks/averaging=swa")
    with pytest.raises(ValueError, match="callbacks.early_stopping=null"):
        pipeline.train(cfg)


def test_swa_statistics_pass_keeps_frozen_batchnorm():
    class Two(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.frozen, self.trained = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)

    module = Two()
    for bn in (module.frozen, module.trained):
        bn.running_mean.fill_(2.0)
    module.frozen.eval()
    SWA().reset_batch_norm_and_save_state(module)
    assert torch.equal(module.frozen.running_mean, torch.full((3,), 2.0))  # eval mode: would not be recomputed
    assert torch.equal(module.trained.running_mean, torch.zeros(3)) and module.trained.momentum is None


# ------------------------------------------------------------------ cRT (Kang et al. 2020)


@pytest.fixture
def stage1(stage1_checkpoint) -> Path:
    return stage1_checkpoint  # resnet18, 2 experts (conftest)


def _representation(state: dict[str, torch.Tensor], num_experts: int = 2) -> dict[str, torch.Tensor]:
    prefixes = tuple(f"net.{p}" for p in ("trunk.", *(f"experts.{i}.stage." for i in range(num_experts))))
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


@pytest.mark.slow  # trains through train() / fit
def test_crt_retrains_only_the_heads_on_a_frozen_representation(tiny_cxr_lt, tmp_path, stage1, recorded, hydra_cleanup):
    rec, run = recorded
    crt = ["+experiment=crt", f"stage1_ckpt={stage1}", "model.num_experts=2", "trainer.max_epochs=1"]
    cfg = _compose(tiny_cxr_lt, tmp_path / "crt", *crt)
    assert cfg.data.sampler._target_.endswith("ClassAwareSampler")
    metrics = pipeline.train(cfg)
    model = run["model"]
    # Only the heads are optimised; the frozen parts are in eval mode while training.
    heads = {id(p) for h in model.net.heads() for p in h.parameters()}
    assert rec.start["optimized"] == heads == {id(p) for p in model.parameters() if p.requires_grad}
    assert rec.start["training_flags"] == (False, True)
    # Representation (weights and BatchNorm statistics) bit-identical to stage 1's; heads changed.
    before, after = _state(stage1), _state(metrics["best_checkpoint"])
    rep_before, rep_after = _representation(before), _representation(after)
    assert rep_before.keys() == rep_after.keys() and any("running_mean" in k for k in rep_after)
    assert all(torch.equal(rep_before[k], rep_after[k]) for k in rep_before)
    head = rec.names[-1]
    assert not torch.equal(rec.start["raw"][head], after[head])  # trained in stage 2
    assert not torch.equal(before[head], rec.start["raw"][head])  # re-initialised (reset_heads)


def _model(cfg) -> torch.nn.Module:
    cfg = pipeline.plain_config(cfg)
    stats = torch.load(cfg.model.decoupled.init_from, weights_only=True)["hyper_parameters"]["stats"]
    return instantiate(cfg.model, stats=stats)


def test_init_from_without_reset_keeps_every_weight(tiny_cxr_lt, tmp_path, stage1, hydra_cleanup):
    over = [f"model.decoupled.init_from={stage1}", "model.num_experts=2"]
    model = _model(_compose(tiny_cxr_lt, tmp_path, *over))
    before = _state(stage1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("net."))
    assert all(p.requires_grad for p in model.parameters()) and model.net.trunk.training
    assert set(representation_prefixes(model.net)) == {"trunk.", "experts.0.stage.", "experts.1.stage."}


def test_stage1_with_other_experts_or_classes_is_refused(tiny_cxr_lt, tmp_path, stage1, hydra_cleanup):
    with pytest.raises(InstantiationException, match="num_experts: checkpoint 2, model 1"):
        _model(_compose(tiny_cxr_lt, tmp_path, "+experiment=crt", f"stage1_ckpt={stage1}"))
    ckpt = torch.load(stage1, weights_only=True)
    classes = list(ckpt["hyper_parameters"]["stats"]["classes"])
    with pytest.raises(Stage1Mismatch, match=r"classes.*unknown to the data \['Atelectasis'\]"):
        read_stage1(stage1, classes=["Lung cancer", *classes[1:]], num_experts=2, backbone="resnet18")
    with pytest.raises(Stage1Mismatch, match="backbone: checkpoint 'resnet18', model 'resnet50'"):
        read_stage1(stage1, classes=classes, num_experts=2, backbone="resnet50")


# ------------------------------------------------------------------ the recipe rows


def test_recipe_rows_are_what_they_say(tmp_path, hydra_cleanup):
    def row(*o: str):
        return compose_config(list(o), tmp_path)

    w = row("+experiment=winner_recipe")
    assert w.model.backbone.name == "convnext_small" and w.model.num_experts == 1
    assert w.model.head._target_.endswith("MLDecoderHead") and w.model.loss._target_.endswith("AsymmetricLoss")
    assert w.callbacks.averaging._target_.endswith("averaging.EMA")
    p = row("+experiment=winner_recipe_plus")
    assert p.model.num_experts == 4 and p.data.sampler._target_.endswith("CycleClassSampler")
    assert p.model.loss._target_.endswith("RIDELoss") and p.model.loss.weight == 0.2
    assert p.model.loss.classification._target_.endswith("AsymmetricLoss")
    assert p.model.loss.classification.apply_to == "experts" and p.model.head._target_.endswith("MLDecoderHead")
    d = row("+experiment=db_loss")
    assert d.model.loss._target_.endswith("DistributionBalancedLoss") and d.model.num_experts == 4
    assert d.data.sampler._target_.endswith("CycleClassSampler")
    c = row("+experiment=[ablation_ride,crt]", "stage1_ckpt=s1.ckpt")
    d = c.model.decoupled
    assert d.init_from == "s1.ckpt" and d.freeze == "representation" and d.reset_heads
    assert c.model.num_experts == 4 and c.model.loss._target_.endswith("RIDELoss") and c.experiment_name == "crt"
