"""What train.py runs: compose parts from the config, fit, test the best checkpoint, write ``metrics.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlgcn_lt.callbacks import BestMetrics
from mlgcn_lt.data.datamodule import CXRDataModule
from mlgcn_lt.loggers import finish_wandb, log_config
from mlgcn_lt.utils.io import atomic_write, write_json

log = logging.getLogger(__name__)


def plain_config(cfg: DictConfig) -> DictConfig:
    """Resolved copy without the ``hydra`` node, enums as strings, still failing on unknown keys (struct)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    out = OmegaConf.create(container)
    OmegaConf.set_struct(out, True)
    return out


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every named entry of a group like ``callbacks`` or ``logger`` (null entries are skipped)."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def build(cfg: DictConfig) -> tuple[CXRDataModule, L.LightningModule, L.Trainer]:
    """Datamodule (set up: statistics known), model built from them, and trainer with callbacks and loggers."""
    datamodule: CXRDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model, stats=datamodule.stats.to_dict())
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")) or False,
    )
    return datamodule, model, trainer


def _find(trainer: L.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test; returns (and writes to ``<run dir>/metrics.json``) best-epoch ``val/*`` and ``test/*``."""
    try:
        return _fit_and_test(cfg)
    finally:
        finish_wandb()  # else every job of a multirun logs into one W&B run


def _fit_and_test(cfg: DictConfig) -> dict[str, Any]:
    start = time.time()
    cfg = plain_config(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg)))
    L.seed_everything(cfg.seed, workers=True)

    datamodule, model, trainer = build(cfg)
    log_config(trainer, cfg)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    best = _find(trainer, BestMetrics)
    val = (
        dict(best.best)
        if best is not None and best.best
        else {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    )
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    metrics: dict[str, Any] = {**val}
    if cfg.get("test"):
        # Without a checkpoint (fast_dev_run, no checkpoint callback) the current weights are tested.
        trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    metrics.update(
        {
            "best_epoch": best.best_epoch if best is not None else None,
            "best_checkpoint": checkpoint,
            "wall_time_s": round(time.time() - start, 1),
        }
    )
    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        log.info("metrics: %s", {k: metrics[k] for k in metrics if "/" not in k[5:] or k.endswith("mAP")})
    return metrics
