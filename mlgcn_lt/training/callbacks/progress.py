"""ProgressBar: the console progress bar."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, also showing the latest ``train/loss``: read once per refresh (``refresh_rate`` steps),
    where ``self.log(..., prog_bar=True, on_step=True)`` would copy it to the host, a device sync, after every step."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss_step") if trainer.training else None
        if loss is not None:
            items["train/loss"] = f"{float(loss):.4g}"
        return items
