"""Lightning callbacks of the framework."""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class BestMetrics(L.Callback):
    """Remembers every ``val/*`` metric of the epoch with the best ``monitor`` value (what ``metrics.json`` reports).

    Uses the same rule as ``ModelCheckpoint`` (first epoch wins ties), so the metrics match the best checkpoint.
    """

    def __init__(self, monitor: str = "val/mAP", mode: Literal["max", "min"] = "max", prefix: str = "val/") -> None:
        self.monitor, self.mode, self.prefix = monitor, mode, prefix
        self.best: dict[str, float] = {}
        self.best_epoch: int | None = None

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_epoch is None:
            return True
        old = self.best[self.monitor]
        return value > old if self.mode == "max" else value < old

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if self._better(value):
            self.best = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefix)}
            self.best_epoch = trainer.current_epoch

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = dict(state_dict.get("best", {}))
        self.best_epoch = state_dict.get("best_epoch")


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, also showing the latest ``train/loss``: read once per refresh (``refresh_rate`` steps),
    where ``self.log(..., prog_bar=True, on_step=True)`` would copy it to the host, a device sync, after every step."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss_step") if trainer.training else None
        if loss is not None:
            items["train/loss"] = f"{float(loss):.4g}"
        return items
