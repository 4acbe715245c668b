"""What train.py runs: compose parts from the config, fit, score the report splits, write the run's outputs.

Protocol (docs/protocol.md): ``val`` chooses the checkpoint, stops early and tunes the F1 thresholds; the report
splits (``dev``, ``test``: those the data config names) are scored once, with the chosen checkpoint.
Run directory: ``config.yaml`` (resolved), ``label_stats.json``, ``checkpoints/``, ``thresholds.json`` (F1
thresholds tuned on validation), per report split ``per_class_<split>.csv`` and ``predictions_<split>.csv`` (a
split without labels: ``predictions_<split>.csv`` and ``submission_<split>.csv``), and ``metrics.json``
(``val/*`` of the best epoch, ``dev/*``, ``test/*``, and ``splits``: where each split comes from).
With SWA (``callbacks/averaging=swa``) the averaged final model (``checkpoints/swa.ckpt``) replaces the best epoch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mlgcn_lt.data.datamodule import CXRDataModule, build_datamodule
from mlgcn_lt.data.tables import ImageTable
from mlgcn_lt.evaluation.outputs import predictions_frame, write_csv, write_split_outputs
from mlgcn_lt.evaluation.submit import SubmissionError, save_submission
from mlgcn_lt.evaluation.thresholds import save_thresholds, tune_thresholds, tuned_f1_metrics
from mlgcn_lt.training.callbacks.averaging import SWA
from mlgcn_lt.training.callbacks.best_metrics import BestMetrics
from mlgcn_lt.training.guards import check_config
from mlgcn_lt.training.loggers.factory import finish_wandb, log_config, log_summary
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


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every named entry of a group like ``callbacks`` or ``logger`` (null entries are skipped)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def data_info(datamodule: CXRDataModule) -> dict[str, Any]:
    """What a checkpoint must know of its data to be evaluated later (stored in its hyper-parameters)."""
    return {"format": datamodule.format, "image_size": datamodule.image_size, "classes": datamodule.classes}


def build(cfg: DictConfig) -> tuple[CXRDataModule, MLGCNModule, L.Trainer]:
    """Datamodule (set up: statistics known), model built from them, and trainer with callbacks and loggers."""
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model, stats=datamodule.stats.to_dict(), data_info=data_info(datamodule))
    loggers = instantiate_group(cfg.get("logger")) or False
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=loggers, plugins=[AtomicCheckpointIO()]
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


def _find(trainer: L.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def _prefixed(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def _validate(trainer: L.Trainer, model: MLGCNModule, datamodule: CXRDataModule, ckpt: str) -> dict[str, float]:
    """Validate a checkpoint; its ``val/*`` metrics (predictions stay in ``model.val_metrics.last``)."""
    trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def _val_outputs(
    datamodule: CXRDataModule, model: MLGCNModule, trainer: L.Trainer, ckpt: str | None, validated: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation predictions of the chosen checkpoint (probs, targets, indices), to tune thresholds on."""
    best = _find(trainer, BestMetrics)
    if validated:  # e.g. SWA: the checkpoint was just validated, its predictions are in the model
        return model.val_metrics.last
    if best is not None and best.best_outputs is not None:  # the best epoch's own validation predictions
        return best.best_outputs
    if ckpt:  # e.g. resumed after the best epoch: predict validation again with the best weights
        _validate(trainer, model, datamodule, ckpt)
    return model.val_metrics.last


def _score_split(
    out: Path,
    split: str,
    datamodule: CXRDataModule,
    model: MLGCNModule,
    trainer: L.Trainer,
    ckpt: str | None,
    thresholds: np.ndarray,
) -> dict[str, float]:
    """Score one report split with the chosen checkpoint: ``<split>/*`` metrics, per-class and predictions files.

    A split without labels gets ``predictions_<split>.csv`` and ``submission_<split>.csv`` and no metrics.
    """
    labelled = datamodule.has_labels(split)
    model.report_split, model.report_labelled = split, labelled
    try:
        # Without a checkpoint (fast_dev_run, no checkpoint callback) the current weights are scored.
        trainer.test(model, dataloaders=datamodule.report_dataloader(split), ckpt_path=ckpt, verbose=False)
    finally:
        model.report_split, model.report_labelled = "test", True
    probs, targets, indices = model.test_metrics.last
    table = datamodule.tables[split]
    if not labelled:
        if trainer.is_global_zero:
            write_csv(out / f"predictions_{split}.csv", predictions_frame(table, indices, probs))
            submission = out / f"submission_{split}.csv"
            written = _write_submission(table, indices, probs, submission, datamodule.format)
            log.info(
                "%s split (%s) has no label columns: wrote predictions_%s.csv%s, no %s/* metrics",
                split,
                table.source,
                split,
                f" and {submission.name}" if written else f" (no {submission.name}: see the error above)",
                split,
            )
        return {}
    values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{split}/")}
    tuned = _prefixed(tuned_f1_metrics(probs, targets, model.classes, thresholds), split)
    if trainer.is_global_zero:
        write_split_outputs(out, split, {**values, **tuned}, model.stats, table, (probs, targets, indices), thresholds)
    return {**values, f"{split}/mF1_tuned": tuned[f"{split}/mF1_tuned"]}


def _write_submission(table: ImageTable, indices: np.ndarray, probs: np.ndarray, path: Path, fmt: str) -> bool:
    """The submission of an unlabelled report split (``python -m mlgcn_lt.submit``'s writer and checks); whether
    it was written (an error is logged, naming why, when it was not)."""
    if len(indices) != len(table) or not np.array_equal(indices, np.arange(len(table))):
        log.error(
            "%s: %d of %d rows predicted (unreadable images skipped?): no %s",
            table.source,
            len(indices),
            len(table),
            path.name,
        )
        return False
    try:
        save_submission(table, probs, path, fmt=fmt)
    except SubmissionError as err:
        log.error("%s not written: %s", path.name, err)
        return False
    return True


def _evaluate_best(
    out: Path,
    datamodule: CXRDataModule,
    model: MLGCNModule,
    trainer: L.Trainer,
    ckpt: str | None,
    validated: bool = False,
) -> dict[str, Any]:
    """Tune F1 thresholds on validation; score every report split (dev, test) with the chosen checkpoint."""
    val_probs, val_targets, _ = _val_outputs(datamodule, model, trainer, ckpt, validated)
    thresholds = tune_thresholds(val_probs, val_targets)
    if trainer.is_global_zero:
        save_thresholds(out / "thresholds.json", model.classes, thresholds, f"val split, checkpoint {ckpt}")
    metrics: dict[str, Any] = {}
    for split in datamodule.report_splits:
        metrics.update(_score_split(out, split, datamodule, model, trainer, ckpt, thresholds))
    return metrics


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

    datamodule, model, trainer = build(cfg)
    if trainer.is_global_zero:
        write_json(out / "label_stats.json", datamodule.stats.to_dict())
    log_config(trainer, cfg)
    check_launch(cfg, trainer)
    resume = resume_checkpoint(out, cfg.get("ckpt_path"), cfg.get("resume", True))
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    if getattr(trainer, "preempted", False):
        log.warning("stopped by a signal after saving last.ckpt: not testing; run the same command to resume")
        return {"preempted": True}

    best = _find(trainer, BestMetrics)
    val = (
        dict(best.best)
        if best is not None and best.best
        else {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    )
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    best_epoch = best.best_epoch if best is not None else None
    swa_checkpoint = getattr(_find(trainer, SWA), "final_checkpoint", None)
    if swa_checkpoint:  # SWA's result is the averaged final model, not the best epoch
        checkpoint, best_epoch = swa_checkpoint, None
        val = _validate(trainer, model, datamodule, checkpoint)
    metrics: dict[str, Any] = {**val}
    if cfg.get("test"):
        metrics.update(_evaluate_best(out, datamodule, model, trainer, checkpoint, validated=bool(swa_checkpoint)))
    metrics.update(
        {
            "trained_steps": int(trainer.global_step),  # optimizer steps; report flags a run with 0
            "best_epoch": best_epoch,
            "best_checkpoint": checkpoint,
            "splits": datamodule.describe_splits(),
            "wall_time_s": round(time.time() - start, 1),
        }
    )
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        scored = {k: v for k, v in metrics.items() if k.startswith(("dev/", "test/")) and k.count("/") == 1}
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
