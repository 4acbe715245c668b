"""Lightning callbacks of the framework."""

from __future__ import annotations

import logging
import math
from typing import Literal

import lightning as L

log = logging.getLogger(__name__)


class BestMetrics(L.Callback):
    """Remembers every ``val/*`` metric of the epoch with the best ``monitor`` value (what ``metrics.json`` reports).

    Uses the same rule as ``ModelCheckpoint`` (first epoch wins ties), so the metrics match the best checkpoint.
    """

    def __init__(self, monitor: str = "val/mAP", mode: Literal["max", "min"] = "max", prefix: str = "val/") -> None:
        self.monitor, self.mode, self.prefix = monitor, mode, prefix
        self.best: dict[str, float] = {}
        self.best_epoch: int | None = None
        self.best_outputs: tuple | None = None  # not checkpointed: recomputed after a resume

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_epoch is None:
            return True
        old = self.best[self.monitor]
        return value > old if self.mode == "max" else value < old

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.monitor not in trainer.callback_metrics:
            return  # only epochs of training count (not trainer.validate() afterwards)
        value = float(trainer.callback_metrics[self.monitor])
        if self._better(value):
            self.best = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefix)}
            self.best_epoch = trainer.current_epoch
            # The best epoch's validation predictions (probs, targets, indices), e.g. to tune thresholds on them.
            metric = getattr(pl_module, "val_metrics", None)
            self.best_outputs = getattr(metric, "last", None)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = dict(state_dict.get("best", {}))
        self.best_epoch = state_dict.get("best_epoch")
