"""What train.py runs: build the parts from the config, fit, test the chosen checkpoint on the report splits,
write the run's outputs.

Protocol (docs/protocol.md): ``val`` chooses the checkpoint, stops early and tunes the F1 thresholds; the report
splits (``dev``, ``test``: those the data config names) are scored once, with the chosen checkpoint: the best
epoch's, or with SWA (``callbacks/averaging=swa``) the averaged final model (``checkpoints/swa.ckpt``).
Run directory: ``config.yaml`` (resolved), ``label_stats.json``, ``checkpoints/``, the files of
``callbacks.report_outputs`` (``thresholds.json``; per report split ``per_class_<split>.csv`` and
``predictions_<split>.csv``, or without labels ``predictions_<split>.csv`` and ``submission_<split>.csv``), and
``metrics.json`` (``val/*`` of the chosen weights, ``dev/*``, ``test/*``, and ``splits``: where each split comes from).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mlgcn_lt.data.datamodule import CXRDataModule, build_datamodule
from mlgcn_lt.training.guards import check_config
from mlgcn_lt.training.loggers.factory import BEST_METRICS, finish_wandb, log_config, log_summary
from mlgcn_lt.training.module import MLGCNModule
from mlgcn_lt.training.rundirs import AtomicCheckpointIO, resume_checkpoint
from mlgcn_lt.training.summary import summary_table
from mlgcn_lt.utils.io import atomic_write, write_json

log = logging.getLogger(__name__)


def plain_config(cfg: DictConfig) -> DictConfig:
    """Resolved copy without the ``hydra`` node, enums as strings, still failing on unknown keys (struct)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)  # dropped before resolving: resolving hydra.run.dir would create a run directory
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    out = OmegaConf.create(container)
    OmegaConf.set_struct(out, True)
    return out


def instantiate_named(group: DictConfig | None) -> dict[str, Any]:
    """Instantiate every named entry of a group like ``callbacks`` or ``logger``, by name (null entries skipped)."""
    if not group:
        return {}
    return {name: instantiate(node) for name, node in group.items() if node is not None and "_target_" in node}


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every named entry of a group like ``callbacks`` or ``logger`` (null entries are skipped)."""
    return list(instantiate_named(group).values())


def data_info(datamodule: CXRDataModule) -> dict[str, Any]:
    """What a checkpoint must know of its data to be evaluated later (stored in its hyper-parameters)."""
    return {"format": datamodule.format, "image_size": datamodule.image_size, "classes": datamodule.classes}


def build(
    cfg: DictConfig, callbacks: Mapping[str, L.Callback] | None = None
) -> tuple[CXRDataModule, MLGCNModule, L.Trainer]:
    """Datamodule (set up: statistics known), model built from them, and trainer with callbacks (``callbacks``,
    else those of ``cfg.callbacks``) and loggers."""
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model, stats=datamodule.stats.to_dict(), data_info=data_info(datamodule))
    if callbacks is None:
        callbacks = instantiate_named(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger")) or False
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=list(callbacks.values()), logger=loggers, plugins=[AtomicCheckpointIO()]
    )
    return datamodule, model, trainer


def check_launch(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Refuse DDP that re-launches this script inside a local Hydra multirun (each child would re-run the sweep).

    Under SLURM (hydra/launcher=slurm) every rank is its own task and nothing is re-launched: allowed.
    """
    from hydra.core.hydra_config import HydraConfig
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not HydraConfig.initialized() or trainer.world_size == 1 or SLURMEnvironment.detect():
        return
    if str(HydraConfig.get().mode) == "RunMode.MULTIRUN":
        raise RuntimeError(
            "DDP inside a local multirun (-m without SLURM) would re-launch the whole sweep in every process. "
            "Run the jobs one at a time (drop -m), or use hydra/launcher=slurm (one task per GPU), or "
            "trainer.strategy=ddp_spawn."
        )


def _prefixed(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    """The ``<prefix>*`` metrics of the last fit / validate / test."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def score_split(
    trainer: L.Trainer, model: MLGCNModule, datamodule: CXRDataModule, split: str, ckpt: str | None
) -> dict[str, float]:
    """Test ``ckpt`` (``None``: the current weights) on report split ``split``; its ``<split>/*`` metrics (none
    without labels). Its files come from ``callbacks.report_outputs``."""
    labelled = datamodule.has_labels(split)
    model.report_split, model.report_labelled = split, labelled
    try:
        trainer.test(model, dataloaders=datamodule.report_dataloader(split), ckpt_path=ckpt, verbose=False)
    finally:
        model.report_split, model.report_labelled = "test", True
    return _prefixed(trainer, f"{split}/") if labelled else {}


def log_failure(error: BaseException) -> None:
    """Write ``error`` with its traceback to the run's log file(s) (Hydra's job log), not to the console.

    Hydra prints the error on stderr only; without this the run's ``<task>.log`` (the tail ``report`` shows for a
    run without metrics) would not say why the run stopped.
    """
    record = log.makeRecord(
        log.name,
        logging.ERROR,
        __file__,
        0,
        "run failed: %s: %s",
        (type(error).__name__, error),
        (type(error), error, error.__traceback__),
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
            handler.flush()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and score; returns (and writes to ``<run dir>/metrics.json``) best-epoch ``val/*``, ``dev/*``, ``test/*``."""
    try:
        return _fit_and_test(cfg)
    except BaseException as e:  # also KeyboardInterrupt: the log says how the run ended
        log_failure(e)
        raise
    finally:
        finish_wandb()  # else every job of a multirun logs into one W&B run


def _fit_and_test(cfg: DictConfig) -> dict[str, Any]:
    start = time.time()
    cfg = plain_config(cfg)
    check_config(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg)))
    L.seed_everything(cfg.seed, workers=True)

    callbacks = instantiate_named(cfg.get("callbacks"))
    datamodule, model, trainer = build(cfg, callbacks)
    if trainer.is_global_zero:
        write_json(out / "label_stats.json", datamodule.stats.to_dict())
    log_config(trainer, cfg)
    check_launch(cfg, trainer)
    resume = resume_checkpoint(out, cfg.get("ckpt_path"), cfg.get("resume", True))
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    if getattr(callbacks.get("preemption"), "saved", None):
        log.warning("stopped by a signal after saving last.ckpt: not testing; run the same command to resume")
        return {"preempted": True}

    swa = getattr(callbacks.get("averaging"), "final_checkpoint", None)
    checkpoint = swa or getattr(trainer.checkpoint_callback, "best_model_path", "") or None  # None: current weights
    if swa:  # SWA's result is the averaged final model: its validation replaces the best epoch's (report_outputs)
        trainer.validate(model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    report = callbacks.get("report_outputs")
    metrics: dict[str, Any] = dict(report.best) if report is not None and report.best else _prefixed(trainer, "val/")
    if cfg.get("test"):
        for split in datamodule.report_splits:
            metrics.update(score_split(trainer, model, datamodule, split, checkpoint))
            if report is not None and f"{split}/mF1_tuned" in report.scores:
                metrics[f"{split}/mF1_tuned"] = report.scores[f"{split}/mF1_tuned"]
    metrics.update(
        {
            "trained_steps": int(trainer.global_step),  # optimizer steps; report flags a run with 0
            "best_epoch": report.best_epoch if report is not None else None,
            "best_checkpoint": checkpoint,
            "splits": datamodule.describe_splits(),
            "wall_time_s": round(time.time() - start, 1),
        }
    )
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        scored = {k: v for k, v in metrics.items() if k.startswith(("dev/", "test/")) and k.count("/") == 1}
        if metrics["best_epoch"] is not None:  # the chosen epoch's group mAPs, beside the per-metric maxima
            scored |= {f"best/{k}": metrics[k] for k in BEST_METRICS if k in metrics}
            scored["best/epoch"] = metrics["best_epoch"]
        log_summary(trainer, {**{f"splits/{k}": v for k, v in metrics["splits"].items()}, **scored})
        log.info("run finished\n%s", summary_table(metrics, out))
    return metrics


def train_task(cfg: DictConfig) -> float | None:
    """Hydra task of ``train.py``: train, then return ``optimized_metric`` (what a sweeper optimises)."""
    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return None if value is None else float(value)


def main() -> None:
    """``mlgcn-train``: ``python train.py`` as a console script (same overrides; ``--help`` lists the groups)."""
    from mlgcn_lt.config.entry import run_hydra

    run_hydra("train", train_task)
