"""End to end: train.py's pipeline through the real configs; checkpoints rebuild the model alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlgcn_lt.training.module import MLGCNModule
from mlgcn_lt.training.train import build, train


@pytest.mark.slow  # trains through train() / fit
def test_fast_dev_run_writes_metrics_and_resolved_config(tiny_cfg):
    cfg = tiny_cfg("debug=fdr")
    metrics = train(cfg)
    out = cfg.hydra.runtime.output_dir
    saved = json.loads(Path(out, "metrics.json").read_text())
    for key in (
        "val/mAP",
        "val/mAUC",
        "val/mF1",
        "val/mAP_head",
        "val/mAP_middle",
        "val/mAP_tail",
        "test/mAP",
        "test/mAP_tail",
        "test/AP/Hernia",
        "val/AP/Support Devices",
    ):
        assert key in saved, key
    assert saved["test/mAP"] == pytest.approx(metrics["test/mAP"])
    assert 0.0 <= saved["test/mAP"] <= 1.0
    text = Path(out, "config.yaml").read_text()
    assert "${" not in text and "resnet18" in text


@pytest.mark.slow  # trains through train() / fit
def test_short_training_checkpoints_and_reloads_alone(tiny_cfg):
    cfg = tiny_cfg("trainer.max_epochs=2", "callbacks.early_stopping=null")
    metrics = train(cfg)
    assert metrics["best_checkpoint"] and metrics["best_epoch"] in (0, 1)
    ckpt = torch.load(metrics["best_checkpoint"], weights_only=True)  # plain hyper-parameters only
    assert ckpt["hyper_parameters"]["restore"]["label_dim"] == 300
    model = MLGCNModule.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu").eval()
    dm, fresh, _ = build(cfg)
    batch = next(iter(dm.val_dataloader()))
    fresh.load_state_dict(ckpt["state_dict"])
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch["image"]).logits, fresh(batch["image"]).logits)
    assert model.classes == dm.classes


@pytest.mark.slow  # trains through train() / fit
def test_readme_main_command_runs_on_a_tiny_embedded_default(tmp_path):
    """`python train.py` as in the README, shrunk: generates the synthetic data, trains, tests, writes metrics."""
    import subprocess
    import sys

    from mlgcn_lt.config import PROJECT_ROOT

    cmd = [
        sys.executable,
        "train.py",
        f"paths.data_dir={tmp_path}/data",
        f"paths.log_dir={tmp_path}/outputs",
        "data.synthetic.n_train=60",
        "data.synthetic.n_dev=30",
        "data.synthetic.n_test=30",
        "data.synthetic.image_size=32",
        "data.image_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer=cpu",
    ]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert 0 <= metrics["test/mAP"] <= 1 and metrics["best_checkpoint"]
    assert (tmp_path / "data" / "synthetic_cxr_lt" / "manifest.json").is_file()
