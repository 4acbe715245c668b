"""What train.py runs: compose parts from the config, fit, test the best checkpoint, write the run's outputs.

Run directory: ``config.yaml`` (resolved), ``label_stats.json``, ``checkpoints/``, ``thresholds.json`` (F1
thresholds tuned on validation), ``per_class_test.csv``, ``predictions_test.csv`` and ``metrics.json``.
With SWA (``callbacks/averaging=swa``) the averaged final model (``checkpoints/swa.ckpt``) replaces the best epoch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mlgcn_lt.averaging import SWA
from mlgcn_lt.callbacks import BestMetrics
from mlgcn_lt.data.datamodule import CXRDataModule
from mlgcn_lt.evaluation import save_thresholds, tune_thresholds, tuned_f1_metrics, write_split_outputs
from mlgcn_lt.guards import check_config
from mlgcn_lt.loggers import finish_wandb, log_config
from mlgcn_lt.module import MLGCNModule
from mlgcn_lt.resume import AtomicCheckpointIO, resume_checkpoint
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
    datamodule: CXRDataModule = instantiate(cfg.data)
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


def _evaluate_best(
    out: Path,
    datamodule: CXRDataModule,
    model: MLGCNModule,
    trainer: L.Trainer,
    ckpt: str | None,
    validated: bool = False,
) -> dict[str, Any]:
    """Tune F1 thresholds on validation, test the best checkpoint, write per-class and predictions files."""
    best = _find(trainer, BestMetrics)
    if validated:  # e.g. SWA: the checkpoint was just validated, its predictions are in the model
        val_probs, val_targets, _ = model.val_metrics.last
    elif best is not None and best.best_outputs is not None:  # the best epoch's own validation predictions
        val_probs, val_targets, _ = best.best_outputs
    else:  # e.g. resumed after the best epoch: predict validation again with the best weights
        if ckpt:
            _validate(trainer, model, datamodule, ckpt)
        val_probs, val_targets, _ = model.val_metrics.last
    thresholds = tune_thresholds(val_probs, val_targets)
    if trainer.is_global_zero:
        save_thresholds(out / "thresholds.json", model.classes, thresholds, f"val split, checkpoint {ckpt}")
    # Without a checkpoint (fast_dev_run, no checkpoint callback) the current weights are tested.
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    probs, targets, indices = model.test_metrics.last
    tuned = _prefixed(tuned_f1_metrics(probs, targets, model.classes, thresholds), "test")
    if trainer.is_global_zero:
        write_split_outputs(
            out,
            "test",
            {**test, **tuned},
            model.stats,
            datamodule.tables["test"],
            (probs, targets, indices),
            thresholds,
        )
    return {**test, "test/mF1_tuned": tuned["test/mF1_tuned"]}


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
    """Fit and test; returns (and writes to ``<run dir>/metrics.json``) best-epoch ``val/*`` and ``test/*``."""
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
            "wall_time_s": round(time.time() - start, 1),
        }
    )
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        summary = {k: round(v, 4) for k, v in metrics.items() if k.count("/") == 1 and isinstance(v, float)}
        log.info("metrics: %s", summary)
    return metrics
