"""What eval.py runs: score a checkpoint on a split, write metrics.json, per-class CSV and predictions.

``split``: train, val, dev or test (docs/protocol.md). A split whose file has no label columns gets
``predictions_<split>.csv`` and ``submission_<split>.csv`` and no metrics.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlgcn_lt.data.datamodule import REPORT_SPLITS, CXRDataModule, build_datamodule
from mlgcn_lt.data.tables import ImageTable
from mlgcn_lt.evaluation.metrics import compute_metrics
from mlgcn_lt.evaluation.outputs import predictions_frame, write_csv, write_split_outputs
from mlgcn_lt.evaluation.predict import fuse_table_predictions, image_size_of, load_checkpoint, with_tta
from mlgcn_lt.evaluation.submit import save_submission
from mlgcn_lt.evaluation.thresholds import load_thresholds, tuned_f1_metrics
from mlgcn_lt.training.train import instantiate_group, log_failure, plain_config
from mlgcn_lt.utils.checkpoints import read_checkpoint
from mlgcn_lt.utils.io import atomic_write, write_json

log = logging.getLogger(__name__)


def _thresholds_path(cfg: DictConfig, ckpt: Path) -> Path | None:
    """``cfg.thresholds``, or the thresholds tuned by the training run the checkpoint belongs to."""
    if cfg.get("thresholds"):
        return Path(cfg.thresholds)
    candidate = ckpt.parent.parent / "thresholds.json"
    return candidate if candidate.is_file() else None


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` of ``cfg.data``; returns the metrics (keys ``<split>/...``)."""
    try:
        return _evaluate(cfg)
    except BaseException as e:
        log_failure(e)  # the run's log file says why it stopped
        raise


def _evaluate(cfg: DictConfig) -> dict[str, Any]:
    start = time.time()
    cfg = plain_config(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg)))
    split = cfg.split
    if split not in ("train", "val", *REPORT_SPLITS):
        raise ValueError(f"split={split!r}: expected train, val, dev or test")

    ckpt = Path(cfg.ckpt_path)
    read_checkpoint(ckpt, what="ckpt_path")  # a bad checkpoint is named before any data is read
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    if split not in datamodule.tables:
        raise ValueError(
            f"split={split!r}: this data config has no {split} split (set data.{split}_csv); "
            f"it has {sorted(datamodule.tables)}"
        )
    model = load_checkpoint(ckpt, datamodule.classes)
    trained_size = image_size_of(model, datamodule.image_size)
    if trained_size != datamodule.image_size:
        log.warning(
            "checkpoint was trained at %d px, evaluating at data.image_size=%d", trained_size, datamodule.image_size
        )
    model = with_tta(model, cfg.tta)
    labelled = datamodule.has_labels(split)
    model.report_split, model.report_labelled = split, labelled
    dataset = datamodule.dataset(split, train_transform=False)
    loader = datamodule.make_loader(dataset, batch_size=datamodule.eval_batch_size)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    trainer.test(model, dataloaders=loader, verbose=False)
    probs, targets, indices = model.test_metrics.last
    table = datamodule.tables[split].subset(indices) if len(indices) != len(dataset) else datamodule.tables[split]
    if cfg.get("fusion"):
        probs = fuse_table_predictions(table, probs, cfg.fusion)

    if not labelled:
        return _predictions_only(cfg, out, split, datamodule, table, probs, ckpt, trainer.is_global_zero, start)
    stats = model.stats  # training statistics travel with the checkpoint: groups and train counts are the model's
    metrics = compute_metrics(probs, targets, model.classes, stats.groups)
    thresholds_file = _thresholds_path(cfg, ckpt)
    thresholds = load_thresholds(thresholds_file, model.classes) if thresholds_file else None
    if thresholds is not None:
        metrics.update(tuned_f1_metrics(probs, targets, model.classes, thresholds))
    metrics = {f"{split}/{k}": v for k, v in metrics.items()}
    if trainer.is_global_zero:
        write_split_outputs(out, split, metrics, stats, table, (probs, targets, np.arange(len(table))), thresholds)
        summary = {k: v for k, v in metrics.items() if k.count("/") == 1}
        write_json(
            out / "metrics.json",
            {
                **summary,
                **{k: v for k, v in metrics.items() if k.count("/") > 1},
                "checkpoint": str(ckpt),
                "split": split,
                "source": datamodule.describe_splits()[split],
                "tta": list(cfg.tta),
                "fusion": cfg.get("fusion"),
                "thresholds": str(thresholds_file or ""),
                "wall_time_s": round(time.time() - start, 1),
            },
        )
        log.info("%s", {k: round(v, 4) for k, v in summary.items() if isinstance(v, float)})
        for logger in instantiate_group(cfg.get("logger")):
            logger.log_hyperparams(OmegaConf.to_container(cfg))
            logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
            logger.finalize("success")
    return metrics


def _predictions_only(
    cfg: DictConfig,
    out: Path,
    split: str,
    datamodule: CXRDataModule,
    table: ImageTable,
    probs: np.ndarray,
    ckpt: Path,
    is_global_zero: bool,
    start: float,
) -> dict[str, Any]:
    """A split without labels: ``predictions_<split>.csv`` and ``submission_<split>.csv``, no metrics."""
    if not is_global_zero:
        return {}
    write_csv(out / f"predictions_{split}.csv", predictions_frame(table, np.arange(len(table)), probs))
    submission = out / f"submission_{split}.csv"
    if len(table) != len(datamodule.tables[split]):
        log.error(
            "%s: %d of %d rows predicted: no %s",
            table.source,
            len(table),
            len(datamodule.tables[split]),
            submission.name,
        )
    else:
        save_submission(table, probs, submission, fmt=datamodule.format)
    log.info(
        "%s split (%s) has no label columns: wrote predictions_%s.csv and %s, no %s/* metrics",
        split,
        table.source,
        split,
        submission.name,
        split,
    )
    info = {"checkpoint": str(ckpt), "split": split, "source": datamodule.describe_splits()[split]}
    write_json(out / "metrics.json", {**info, "tta": list(cfg.tta), "wall_time_s": round(time.time() - start, 1)})
    return {}


def evaluate_task(cfg: DictConfig) -> float | None:
    """Hydra task of ``eval.py``: evaluate, then return the split's mAP (``None`` without labels)."""
    metrics = evaluate(cfg)
    value = metrics.get(f"{cfg.split}/mAP")
    return None if value is None else float(value)


def main() -> None:
    """``mlgcn-eval``: ``python eval.py`` as a console script (same overrides; ``--help`` lists the groups)."""
    from mlgcn_lt.config.entry import run_hydra

    run_hydra("eval", evaluate_task)
