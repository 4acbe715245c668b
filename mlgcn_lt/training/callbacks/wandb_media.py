"""W&B media: per-class AP tables and bar charts (head → tail), figures, best-epoch summary. No-op without W&B."""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any

import lightning as L

from mlgcn_lt.training.loggers.factory import wandb_loggers

log = logging.getLogger(__name__)

COLUMNS = ("class", "group", "train count", "AP")
#: Figure functions tried at test end: ``fn(rows: pandas.DataFrame with COLUMNS) -> matplotlib Figure``.
DEFAULT_FIGURES = ("mlgcn_lt.reporting.plots.plot_per_class_ap",)


def per_class_rows(pl_module: L.LightningModule, metrics: dict[str, Any], stage: str) -> list[list[Any]]:
    """``[class, group, train count, AP]`` per class, most frequent first (the long tail reads left to right)."""
    stats = pl_module.stats
    rows = []
    for name, count in zip(stats.classes, stats.counts, strict=True):
        value = metrics.get(f"{stage}/AP/{name}")
        ap = None if value is None or math.isnan(float(value)) else float(value)  # NaN: no positive in the split
        rows.append([name, stats.groups.get(name, ""), int(count), ap])
    rows.sort(key=lambda r: -r[2])
    return rows


def _load(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


class WandbPerClassAP(L.Callback):
    """Logs ``<stage>/per_class_ap`` (table: class, group, train count, AP) and its bar chart to W&B.

    At validation end every ``every_n_epochs`` epochs (0: never) and at the end of scoring each report split
    (``dev/per_class_ap``, ``test/per_class_ap``), with the figures of ``figures`` whose module exists. (The
    ``best/*`` summary values of the chosen epoch come from ``train()`` with the other run results.)
    """

    def __init__(self, every_n_epochs: int = 1, log_test: bool = True, figures: list[str] | None = None) -> None:
        self.every_n_epochs = every_n_epochs
        self.log_test = log_test
        self.figures = list(DEFAULT_FIGURES if figures is None else figures)

    @staticmethod
    def _logger(trainer: L.Trainer) -> Any:
        loggers = wandb_loggers(trainer)
        return loggers[0] if loggers and trainer.is_global_zero else None

    def _log_table(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> list[list[Any]] | None:
        logger = self._logger(trainer)
        if logger is None or not hasattr(pl_module, "stats"):
            return None
        import wandb

        rows = per_class_rows(pl_module, dict(trainer.callback_metrics), stage)
        table = wandb.Table(columns=list(COLUMNS), data=rows)
        title = f"{stage} AP per class (epoch {trainer.current_epoch}), head → tail"
        chart = wandb.plot.bar(table, "class", "AP", title=title)
        payload = {f"{stage}/per_class_ap": table, f"{stage}/per_class_ap_chart": chart, "epoch": trainer.current_epoch}
        logger.log_metrics(payload, step=trainer.global_step)
        return rows

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log_table(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Per-class AP of the report split just scored (``dev`` or ``test``; nothing for a split without labels)."""
        split = getattr(pl_module, "report_split", "test")
        if not getattr(pl_module, "report_labelled", True):
            return
        if self.log_test and (rows := self._log_table(trainer, pl_module, split)):
            self._log_figures(trainer, rows, split)

    def _log_figures(self, trainer: L.Trainer, rows: list[list[Any]], split: str = "test") -> None:
        logger = self._logger(trainer)
        fns = [(path, fn) for path in self.figures if (fn := _load(path)) is not None]
        if logger is None or not fns:
            return
        import pandas as pd
        import wandb

        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        images = {}
        for path, fn in fns:
            try:
                fig = fn(frame)
                images[f"{split}/figures/{path.rsplit('.', 1)[-1]}"] = wandb.Image(fig)
                _close(fig)
            except Exception as err:  # a figure is a bonus: never fail the run for it
                log.warning(
                    "W&B figure %s skipped (%s: %s); expected fn(DataFrame %s) -> Figure",
                    path,
                    type(err).__name__,
                    err,
                    COLUMNS,
                )
        if images:
            logger.log_metrics(images, step=trainer.global_step)


def _close(fig: Any) -> None:
    try:
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception:  # not a matplotlib figure
        pass
