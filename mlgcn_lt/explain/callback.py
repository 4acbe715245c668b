"""A fixed set of validation images with their class activation maps, every N epochs (files, and W&B if active)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch

from mlgcn_lt.explain.cams import METHODS, class_maps
from mlgcn_lt.explain.overlay import contact_sheet
from mlgcn_lt.training.loggers.factory import wandb_loggers

log = logging.getLogger(__name__)


class ExplainMaps(L.Callback):
    """Contact sheets of ``num_images`` validation images (evenly spread over the split, the same every time).

    Every ``every_n_epochs`` epochs at validation end: the ``top_k`` findings by probability with their maps
    (``method``, see :mod:`mlgcn_lt.explain.cams`) into ``<run dir>/<dirname>/epoch_<e>/<i>.png``, and as
    ``val/explain`` images to W&B when a W&B logger is active. A failure only warns: figures never stop training.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        num_images: int = 4,
        top_k: int = 3,
        method: str = "gcn_cam",
        dirname: str = "explain",
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"callbacks.explain.method={method!r}; known: {list(METHODS)}")
        if every_n_epochs < 1 or num_images < 1 or top_k < 1:
            raise ValueError("callbacks.explain: every_n_epochs, num_images and top_k must be >= 1")
        self.every_n_epochs, self.num_images, self.top_k = every_n_epochs, num_images, top_k
        self.method, self.dirname = method, dirname

    def _images(self, trainer: L.Trainer) -> tuple[torch.Tensor, list[int]]:
        loaders = trainer.val_dataloaders
        dataset = (loaders[0] if isinstance(loaders, list | tuple) else loaders).dataset
        index = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, min(self.num_images, len(dataset)))})
        return torch.stack([dataset[i]["image"] for i in index]), index

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        try:
            self._explain(trainer, pl_module)
        except Exception as err:  # a figure is a bonus: never fail the run for it
            log.warning(
                "callbacks.explain skipped at epoch %d (%s: %s)", trainer.current_epoch, type(err).__name__, err
            )

    def _explain(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Path]:
        images, index = self._images(trainer)
        images = images.to(pl_module.device)
        net, was_training = pl_module.net, pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                with torch.no_grad():
                    probs = torch.sigmoid(net(images).logits.float()).cpu().numpy()
                top = np.argsort(-probs, axis=1)[:, : self.top_k]
                needed = sorted(set(top.ravel().tolist()))
                maps = class_maps(net, images, needed, self.method).detach().cpu().numpy()
        finally:
            pl_module.train(was_training)
        column = {j: k for k, j in enumerate(needed)}
        out = Path(trainer.default_root_dir) / self.dirname / f"epoch_{trainer.current_epoch:03d}"
        names = list(pl_module.classes)
        paths = []
        for b, i in enumerate(index):
            panels = [(names[j], float(probs[b, j]), maps[b, column[j]], []) for j in top[b]]
            paths.append(contact_sheet(out / f"{i}.png", images[b, 0].cpu().numpy(), panels))
        loggers = wandb_loggers(trainer)
        if loggers:
            import wandb

            media = [wandb.Image(str(p), caption=f"val image {i}") for p, i in zip(paths, index, strict=True)]
            loggers[0].log_metrics({"val/explain": media, "epoch": trainer.current_epoch}, step=trainer.global_step)
        return paths
