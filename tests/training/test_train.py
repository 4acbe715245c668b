"""End to end: train.py's pipeline through the real configs; checkpoints rebuild the model alone; degenerate label
statistics and one class only train; `metrics.json` counts the optimizer steps; a failed run logs its traceback."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import TINY_OVERRIDES, compose_config, cxr_lt_frame, write_image
from mlgcn_lt.config import PROJECT_ROOT
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES
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


def _labels_dir(tmp_path: Path, train_labels: np.ndarray, classes=CXR_LT_2023_CLASSES) -> Path:
    root = tmp_path / "edge"
    for split, labels in (("train", train_labels), ("development", train_labels), ("test", train_labels)):
        df = cxr_lt_frame(len(labels), seed=hash(split) % 100, classes=classes, subject_offset=len(split) * 1000)
        df[list(classes)] = labels.astype(int)
        for i, rel in enumerate(df["path"]):
            write_image(root / rel, (40, 40), seed=i)
        df.to_csv(root / f"{split}.csv", index=False)
    return root


@pytest.mark.slow  # trains through train() / fit
@pytest.mark.parametrize("case", ["no_positive", "no_negative", "single_image"])
def test_degenerate_label_statistics_train_with_warnings(tmp_path, hydra_cleanup, case, caplog):
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 26)) < 0.3).astype(float)
    if case == "no_positive":
        labels[:, CXR_LT_2023_CLASSES.index("Hernia")] = 0
    elif case == "no_negative":
        labels[:, CXR_LT_2023_CLASSES.index("Support Devices")] = 1
    else:
        labels = labels[:1]
    root = _labels_dir(tmp_path, labels)
    for row in ("+experiment=ablation_lse_mha",):  # glove, graph, cycle sampler, experts, RIDE, metrics
        cfg = compose_config(
            [
                f"data.root={root}",
                *TINY_OVERRIDES,
                row,
                "debug=fdr",
                "data.batch_size=2",
                "data.val_csv=development.csv",
                "data.dev_csv=null",
            ],
            tmp_path / "run",
        )  # val given (a single training image cannot also give a carved one); dev off: one file, one split
        metrics = train(cfg)
        values = [v for k, v in metrics.items() if k.startswith("test/m") and isinstance(v, float)]
        assert all(np.isnan(v) or 0 <= v <= 1 for v in values)
    if case == "no_positive":
        assert metrics["test/n_classes_without_positives"] >= 1 and np.isnan(metrics["test/AP/Hernia"])
        assert "no positive training image" in caplog.text and "Hernia" in caplog.text
    if case == "no_negative":
        assert np.isnan(metrics["test/AUC/Support Devices"]) and metrics["test/AP/Support Devices"] == 1.0


@pytest.mark.slow  # trains through train() / fit
def test_one_class_only(tmp_path, hydra_cleanup):
    root = tmp_path / "one"
    df = pd.DataFrame(
        {"file": [f"im{i}.png" for i in range(12)], "Edema": [i % 3 == 0 for i in range(12)], "pid": range(12)}
    )
    for f in df["file"]:
        write_image(root / f, (40, 40))
    df["Edema"] = df["Edema"].astype(int)
    df.to_csv(root / "labels.csv", index=False)
    cfg = compose_config(
        [
            "data=csv",
            f"data.root={root}",
            "data.train_csv=labels.csv",
            "data.columns.path_column=file",
            "data.columns.label_columns=[Edema]",
            "data.columns.group_column=pid",
            *TINY_OVERRIDES,
            "debug=fdr",
            "data.batch_size=2",
            "+experiment=ablation_ride",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert "test/AP/Edema" in metrics


@pytest.mark.slow
def test_metrics_json_records_the_optimizer_steps(stage1_checkpoint):
    metrics = json.loads((stage1_checkpoint.parent.parent / "metrics.json").read_text())
    assert metrics["trained_steps"] == 2  # one epoch of two batches


@pytest.mark.slow  # calls train() (it fails at setup, before any step)
def test_a_failed_run_logs_its_traceback_to_the_run_log(tiny_cfg, tmp_path):
    from mlgcn_lt.training.train import train

    log_file = tmp_path / "train.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(Exception, match="gone") as info:
            train(tiny_cfg(f"data.root={tmp_path / 'gone'}"))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    text = log_file.read_text()
    assert "run failed" in text and "Traceback (most recent call last)" in text
    assert str(info.value).splitlines()[0] in text


@pytest.mark.slow  # runs train.py in a subprocess (it fails at setup)
def test_train_py_setup_failure_is_in_the_hydra_run_log(tmp_path):
    log_dir = tmp_path / "logs"
    cmd = [sys.executable, "train.py", *TINY_OVERRIDES, f"data.root={tmp_path / 'gone'}", f"paths.log_dir={log_dir}"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    (log,) = (log_dir / "train" / "runs").glob("*/train.log")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and str(tmp_path / "gone") in text


def test_composing_a_config_creates_no_run_directory(tmp_path, monkeypatch, hydra_cleanup):
    """Resolving hydra.run.dir creates a run directory; plain_config must not (43 stray dirs in outputs/)."""
    from mlgcn_lt.training.train import plain_config

    monkeypatch.setenv("MLGCN_LOG_DIR", str(tmp_path / "logs"))
    cfg = compose_config(["data.root=/x", *TINY_OVERRIDES], tmp_path / "run")
    assert plain_config(cfg).paths.output_dir == str(tmp_path / "run")
    assert not (tmp_path / "logs").exists()
