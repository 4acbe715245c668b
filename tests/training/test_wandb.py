"""W&B, offline: what the run file holds (best group mAPs, per-class tables, config); W&B never stops training."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from helpers import TINY_OVERRIDES
from mlgcn_lt.training.callbacks.wandb_media import WandbPerClassAP
from mlgcn_lt.training.loggers.factory import BEST_METRICS, finish_wandb, run_name, wandb_logger
from mlgcn_lt.training.loggers.wandb_offline import find_offline_runs, read_offline_run
from mlgcn_lt.training.train import train

SHORT = ["trainer.max_epochs=2", "trainer.limit_train_batches=1", "trainer.num_sanity_val_steps=0"]
TINY_FIT = ["trainer.max_epochs=1", "trainer.num_sanity_val_steps=0"] + [
    f"trainer.limit_{split}_batches=1" for split in ("train", "val", "test")
]


@pytest.fixture(autouse=True)
def wandb_env(monkeypatch, tmp_path):
    """Offline, quiet, W&B's settings / cache dirs in tmp; W&B re-reads them (teardown) and no run is left open."""
    import wandb

    wandb.teardown()  # W&B caches the environment in a process-wide singleton
    for var in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_CONFIG_DIR", "cfg"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / sub))
    monkeypatch.setenv("NETRC", str(tmp_path / "no.netrc"))
    yield
    assert wandb.run is None, "train() must close its W&B run"
    wandb.teardown()


def bar_figure(rows):
    """A figure function as ``mlgcn_lt.reporting.plots`` would provide (here: AP per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(range(len(rows)), rows["AP"].fillna(0))
    return fig


def broken_figure(rows):
    raise KeyError("no such column")


def csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_run_name_from_overrides_without_paths():
    overrides = ["+experiment=ablation_lse", "seed=1", "paths.log_dir=/x", "data.root=/d", "logger=wandb", "d=/abs"]
    assert run_name(overrides, "ablation_lse", 1) == "experiment=ablation_lse,seed=1"
    assert run_name([], "ablation_lse", 2) == "ablation_lse_seed2"
    assert run_name("seed=1,model.num_experts=2", None, None) == "seed=1,model.num_experts=2"
    assert len(run_name([f"k{i}=v" for i in range(100)])) <= 128


@pytest.mark.slow  # trains through train() / fit
def test_offline_run_keeps_best_group_maps_per_class_table_and_config(tiny_cfg, caplog):
    exclude = "logger.wandb.name_exclude_keys=[data,trainer,logger,callbacks]"  # the tiny test set-up
    figures = "callbacks.wandb_per_class.figures=[test_wandb.bar_figure,test_wandb.broken_figure,no.such.fn]"
    extra = ["experiment_name=wandb_test", "tags=[smoke]", "seed=3", figures, *SHORT]
    cfg = tiny_cfg("logger=[csv,wandb]", exclude, *extra)
    with caplog.at_level(logging.WARNING, logger="mlgcn_lt.training.callbacks.wandb_media"):
        metrics = train(cfg)
    out = Path(cfg.hydra.runtime.output_dir)
    assert (out / "metrics.json").is_file()
    assert len(find_offline_runs(out)) == 1  # W&B's files live inside the run directory
    run = read_offline_run(out)

    assert run.run["group"] == "wandb_test" and run.run["job_type"] == "train"
    assert set(run.run["tags"]) == {"smoke", "wandb_test"}
    assert run.run["name"] == "experiment_name=wandb_test,tags=[smoke],seed=3"
    assert run.config["experiment_name"] == "wandb_test" and run.config["seed"] == 3
    assert run.config["model"]["backbone"]["_target_"]

    # The summary keeps the best of each group mAP over the epochs (as in metrics.csv), and the best epoch's.
    epochs = [r for r in csv_rows(out) if r.get("val/mAP")]
    assert len(epochs) == 2
    for key in BEST_METRICS:
        assert run.summary[key]["max"] == pytest.approx(max(float(r[key]) for r in epochs)), key
        assert run.summary[f"best/{key}"] == pytest.approx(metrics[key]), key
    assert run.summary["best/epoch"] == metrics["best_epoch"]
    assert run.summary["test/mAP"] == pytest.approx(metrics["test/mAP"])
    # The report splits' scores with the chosen checkpoint, and where each split comes from (docs/protocol.md).
    assert run.summary["dev/mAP"] == pytest.approx(metrics["dev/mAP"])
    assert "carved from train.csv by subject_id" in run.summary["splits/val"]
    assert "development.csv, report only" in run.summary["splits/dev"]
    assert len(run.tables("dev/per_class_ap")) == 1

    # Per-class tables: one per validation epoch and one at test end, 26 classes, most frequent first.
    val_tables, test_tables = run.tables("val/per_class_ap"), run.tables("test/per_class_ap")
    assert len(val_tables) == 2 and len(test_tables) == 1
    table = json.loads(test_tables[0].read_text())
    assert table["columns"] == ["class", "group", "train count", "AP"]
    assert len(table["data"]) == 26
    counts = [row[2] for row in table["data"]]
    assert counts == sorted(counts, reverse=True) and {row[1] for row in table["data"]} == {"head", "middle", "tail"}
    by_class = {row[0]: row[3] for row in table["data"]}
    assert by_class["Hernia"] == pytest.approx(metrics["test/AP/Hernia"])
    charts = run.config["_wandb"]["visualize"]
    assert {"val/per_class_ap_chart", "test/per_class_ap_chart"} <= set(charts)

    # Figures at test end: the working one as an image; the broken one only warns; a missing module is skipped.
    assert run.summary["test/figures/bar_figure"]["_type"] == "image-file"
    assert list((run.path / "files" / "media" / "images" / "test" / "figures").glob("bar_figure_*.png"))
    assert "test_wandb.broken_figure skipped (KeyError" in caplog.text and "no.such" not in caplog.text


@pytest.mark.slow  # trains through train() / fit
def test_online_without_key_or_network_still_trains_offline(tiny_cfg, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "online")
    cfg = tiny_cfg("logger=wandb", *TINY_FIT)
    start = time.time()
    with caplog.at_level(logging.WARNING, logger="mlgcn_lt.training.loggers.factory"):
        metrics = train(cfg)
    assert time.time() - start < 30
    out = Path(cfg.hydra.runtime.output_dir)
    assert (out / "metrics.json").is_file() and 0 <= metrics["test/mAP"] <= 1
    assert "No API key" in caplog.text and "logging OFFLINE" in caplog.text and "wandb sync" in caplog.text
    run = read_offline_run(out)
    assert run.summary["val/mAP"]["max"] == pytest.approx(metrics["val/mAP"])


def test_unreachable_server_falls_back_offline_within_the_timeout(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: connection refused
    start = time.time()
    with caplog.at_level(logging.WARNING, logger="mlgcn_lt.training.loggers.factory"):
        logger = wandb_logger(save_dir=str(tmp_path), mode="online", init_timeout=2)
    assert time.time() - start < 20
    assert isinstance(logger, WandbLogger) and logger.experiment.settings.mode == "offline"
    assert "CommError" in caplog.text and "wandb sync" in caplog.text
    finish_wandb()
    assert find_offline_runs(tmp_path)


def test_when_nothing_starts_metrics_go_to_csv(tmp_path, monkeypatch, caplog):
    import wandb

    def broken_init(**kwargs):
        raise RuntimeError("broken W&B install")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level(logging.WARNING, logger="mlgcn_lt.training.loggers.factory"):
        logger = wandb_logger(save_dir=str(tmp_path), mode="online")
    assert isinstance(logger, CSVLogger) and Path(logger.log_dir) == tmp_path / "csv"
    assert "broken W&B install" in caplog.text and "WITHOUT W&B" in caplog.text


@pytest.mark.slow  # trains through train() / fit
def test_disabled_mode_trains_and_writes_no_run(tiny_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = tiny_cfg("logger=wandb", *TINY_FIT)
    train(cfg)
    out = Path(cfg.hydra.runtime.output_dir)
    assert (out / "metrics.json").is_file() and not find_offline_runs(out)


@pytest.mark.slow  # trains through train() / fit
def test_run_is_closed_when_training_fails(tiny_cfg, tmp_path):
    import wandb

    cfg = tiny_cfg("logger=wandb", f"ckpt_path={tmp_path}/missing.ckpt")
    with pytest.raises(FileNotFoundError):
        train(cfg)
    assert wandb.run is None
    assert read_offline_run(cfg.hydra.runtime.output_dir).run["job_type"] == "train"


def test_callback_is_a_no_op_without_wandb(tmp_path):
    trainer = L.Trainer(logger=CSVLogger(tmp_path), accelerator="cpu", enable_progress_bar=False)
    callback = WandbPerClassAP()
    callback.on_validation_end(trainer, None)
    callback.on_test_end(trainer, None)
    callback.on_fit_end(trainer, None)
    assert not (tmp_path / "wandb").exists()


@pytest.mark.slow
def test_multirun_jobs_are_separate_wandb_runs(tiny_cxr_lt, tmp_path):
    """`train.py -m seed=0,1`: the basic launcher runs both jobs in one process; each gets its own named W&B run."""
    import os
    import subprocess
    import sys

    from mlgcn_lt.config import PROJECT_ROOT

    overrides = [f"data.root={tiny_cxr_lt}", *TINY_OVERRIDES, *TINY_FIT, f"paths.log_dir={tmp_path}/outputs"]
    overrides += ["logger=wandb", "logger.wandb.name_exclude_keys=[data,trainer,logger]", "seed=0,1"]
    cmd = [sys.executable, "train.py", "-m", *overrides]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=os.environ, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    runs = [read_offline_run(sweep / str(job)) for job in (0, 1)]
    assert [r.run["name"] for r in runs] == ["seed=0", "seed=1"]
    assert [r.config["seed"] for r in runs] == [0, 1] and runs[0].path.name != runs[1].path.name
    assert all(r.finished and "max" in r.summary["val/mAP"] for r in runs)
