"""callbacks.report_outputs: the best epoch's validation predictions travel in the checkpointed state, so a run
resumed after its best epoch tunes the same thresholds without validating again; validate() (SWA) replaces them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from helpers import TINY_OVERRIDES, compose_config
from mlgcn_lt.evaluation.thresholds import tune_thresholds
from mlgcn_lt.training.callbacks.report_outputs import ReportOutputs

CLASSES = ["a", "b", "c"]


def _outputs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((40, 3)) < 0.4).astype(np.float32)
    targets[0, 2] = np.nan  # an unknown label
    return rng.random((40, 3)).astype(np.float32), targets, np.arange(40)


def _trainer(fn: TrainerFn, epoch: int = 0, metrics: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn=fn),
        current_epoch=epoch,
        callback_metrics={k: torch.tensor(v) for k, v in (metrics or {}).items()},
        is_global_zero=True,
        ckpt_path="best.ckpt",
    )


def _validate(cb: ReportOutputs, module: SimpleNamespace, fn: TrainerFn, epoch: int, mAP: float, seed: int) -> None:
    module.val_metrics.last = _outputs(seed)
    cb.on_validation_end(_trainer(fn, epoch, {"val/mAP": mAP, "val/mAUC": 0.5, "train/loss": 1.0}), module)


def _thresholds(path: Path) -> list[float]:
    return json.loads((path / "thresholds.json").read_text())["thresholds"]


def test_state_round_trips_the_best_epoch_predictions(tmp_path):
    module = SimpleNamespace(val_metrics=SimpleNamespace(), classes=CLASSES)
    cb = ReportOutputs(output_dir=str(tmp_path / "a"))
    for epoch, (mAP, seed) in enumerate([(0.5, 0), (0.7, 1), (0.7, 2), (0.6, 3)]):  # ties: the first epoch wins
        _validate(cb, module, TrainerFn.FITTING, epoch, mAP, seed)
    assert cb.best_epoch == 1 and cb.best == {"val/mAP": pytest.approx(0.7), "val/mAUC": 0.5}
    torch.save({"callback": cb.state_dict()}, tmp_path / "last.ckpt")

    resumed = ReportOutputs(output_dir=str(tmp_path / "b"))
    resumed.load_state_dict(torch.load(tmp_path / "last.ckpt", weights_only=True)["callback"])
    assert resumed.best_epoch == 1 and resumed.best == cb.best
    # the module itself now only knows the last epoch's predictions (seed 3): the state, not the module, is used
    for callback, out in ((cb, "a"), (resumed, "b")):
        (tmp_path / out).mkdir()
        callback.on_test_start(_trainer(TrainerFn.TESTING), module)
    expected = tune_thresholds(*_outputs(1)[:2])
    assert _thresholds(tmp_path / "a") == _thresholds(tmp_path / "b") == pytest.approx(expected.tolist())
    assert not np.allclose(expected, tune_thresholds(*_outputs(3)[:2]))


def test_validate_replaces_the_best_epoch_and_testing_a_checkpoint_keeps_it(tmp_path):
    module = SimpleNamespace(val_metrics=SimpleNamespace(), classes=CLASSES)
    cb = ReportOutputs(output_dir=str(tmp_path))
    _validate(cb, module, TrainerFn.FITTING, 0, 0.7, 0)
    saved = cb.state_dict()
    _validate(cb, module, TrainerFn.VALIDATING, 0, 0.4, 5)  # e.g. SWA's averaged model: worse, still chosen
    assert cb.best_epoch is None and cb.best["val/mAP"] == pytest.approx(0.4)
    # Lightning restores callback states when testing a checkpoint too: that must not bring the old choice back
    cb.on_load_checkpoint(_trainer(TrainerFn.TESTING), module, {})
    cb.load_state_dict(saved)
    assert cb.best_epoch is None
    cb.on_test_start(_trainer(TrainerFn.TESTING), module)
    assert _thresholds(tmp_path) == pytest.approx(tune_thresholds(*_outputs(5)[:2]).tolist())


def test_a_run_checkpointed_by_best_metrics_resumes_with_its_best_epoch():
    cb = ReportOutputs()
    old = {"callbacks": {"BestMetrics": {"best": {"val/mAP": 0.6}, "best_epoch": 4}}}
    cb.on_load_checkpoint(_trainer(TrainerFn.FITTING), SimpleNamespace(), old)
    assert cb.best == {"val/mAP": 0.6} and cb.best_epoch == 4 and cb.best_outputs is None


@pytest.mark.slow  # trains through train() / fit
def test_run_resumed_after_its_best_epoch_writes_the_same_thresholds_without_validating(
    tiny_cxr_lt, tmp_path, hydra_cleanup, monkeypatch
):
    from mlgcn_lt.training.module import MLGCNModule
    from mlgcn_lt.training.train import train

    common = [f"data.root={tiny_cxr_lt}", *TINY_OVERRIDES, "trainer.max_epochs=2", "callbacks.early_stopping=null"]
    first = train(compose_config(common, tmp_path / "a"))
    validated = []
    original = MLGCNModule.validation_step

    def counting(self, *args):
        if not self.trainer.sanity_checking:  # the resumed fit's sanity check predicts nothing that is kept
            validated.append(self.trainer.state.fn)
        return original(self, *args)

    monkeypatch.setattr(MLGCNModule, "validation_step", counting)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    resumed = train(compose_config([*common, f"ckpt_path={last}"], tmp_path / "b"))  # nothing left to train
    assert not validated  # the old code validated the best checkpoint again to get its predictions
    a, b = (json.loads((tmp_path / d / "thresholds.json").read_text()) for d in "ab")
    assert a == b
    for key in ("val/mAP", "best_epoch", "best_checkpoint", "test/mAP", "test/mF1_tuned"):
        assert resumed[key] == first[key], key
