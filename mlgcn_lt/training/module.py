"""MLGCNModule: builds backbone / pooling / attention / heads / experts / loss from their configs and trains them.

The module receives its parts as configs (``_recursive_: false``) plus the training label statistics, and saves
them as hyper-parameters: a checkpoint alone rebuilds the model (``MLGCNModule.load_from_checkpoint(path)``).

Decoupled training (cRT, Kang et al. ICLR 2020; ``mlgcn_lt/training/decoupled.py``): ``init_from`` starts from
another run's checkpoint (all weights, or only the representation with ``reset_heads``),
``freeze="representation"`` keeps the trunk and the expert stages fixed (no gradients, BatchNorm statistics
frozen: eval mode) so that only the heads train.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.evaluation.metrics import MultilabelMetrics
from mlgcn_lt.losses.base import LossOutput, build_loss
from mlgcn_lt.models.experts import ModelOutput, MultiExpertNet
from mlgcn_lt.models.factory import as_config, build_net
from mlgcn_lt.training.decoupled import Stage1, freeze_representation, load_stage1, read_stage1
from mlgcn_lt.training.guards import checkpoint_differences
from mlgcn_lt.training.nonfinite import NonFiniteTracker
from mlgcn_lt.training.precision import clip_gradients

log = logging.getLogger(__name__)

Config = DictConfig | Mapping[str, Any]


class MLGCNModule(L.LightningModule):
    """ML-GCN with experts. Logs ``train/loss``, ``val/*`` and ``test/*`` (mAP, mAUC, mF1, group mAPs, per-class AP)."""

    def __init__(
        self,
        *,
        backbone: Config,
        pooling: Config,
        head: Config,
        label_embedding: Config,
        attention: Config | None,
        loss: Config,
        optimizer: Config,
        scheduler: Config | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        num_experts: int = 1,
        expert_init: Literal["pretrained_copy", "random"] = "pretrained_copy",
        expert_width: int | None = None,
        share_attention: bool = False,
        ensemble: Literal["logits", "probs"] = "logits",
        input_norm: Literal["imagenet", "unit"] = "imagenet",
        activation_checkpointing: bool = False,
        init_from: str | None = None,
        reset_heads: bool = False,
        freeze: Literal["none", "representation"] = "none",
        on_nonfinite: Literal["error", "skip"] = "error",
        nonfinite_check_every_n_steps: int | None = None,
        stats: Mapping[str, Any],
        data_info: Mapping[str, Any] | None = None,
        restore: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.stats = LabelStats.from_dict(dict(stats))
        self.classes = list(self.stats.classes)
        # A checkpoint of this model (restore) already holds the weights: init_from only applies to a new model.
        stage1 = self._read_stage1() if init_from and restore is None else None
        self.net = self._build_net(restore, stage1)
        if stage1 is not None:
            load_stage1(self.net, stage1, heads=not reset_heads)
            log.info("initialised from %s (%s)", init_from, "representation only" if reset_heads else "all weights")
        if freeze == "representation":
            freeze_representation(self.net)
            self.train()
        self.loss_fn = build_loss(as_config(loss), self.stats)
        #: Test-time augmentations applied in test / predict (set by eval and submission code).
        self.tta: tuple[str, ...] = ()
        #: The split ``trainer.test`` scores (its metrics are logged as ``<report_split>/*``: ``test``, ``dev``...),
        #: and whether it has labels (without them: predictions gathered in ``test_metrics.last``, nothing logged).
        self.report_split = "test"
        self.report_labelled = True
        #: Non-finite losses: tracked on the device, checked every ``nonfinite_check_every_n_steps`` (default: at
        #: logging steps) and at epoch end (``error``), or decided per batch (``skip``, counted).
        self.nonfinite = NonFiniteTracker()
        self.skipped_nonfinite = 0
        self.val_metrics = MultilabelMetrics(self.classes, self.stats.groups)
        self.test_metrics = MultilabelMetrics(self.classes, self.stats.groups)

    # ------------------------------------------------------------------ construction
    def _read_stage1(self) -> Stage1:
        hp = self.hparams
        return read_stage1(hp.init_from, classes=self.classes, num_experts=hp.num_experts, backbone=hp.backbone["name"])

    def _build_net(self, restore: Mapping[str, Any] | None, stage1: Stage1 | None = None) -> MultiExpertNet:
        """The network (:func:`~mlgcn_lt.models.factory.build_net`); weights from a checkpoint (``restore``, or
        stage 1 of cRT) mean no pretrained download, and no label-embedding fit when the heads come with them."""
        hp = self.hparams
        label_dim = None
        if restore is not None or (stage1 is not None and not hp.reset_heads):
            label_dim = int(restore["label_dim"] if restore is not None else stage1.label_dim)
        from_checkpoint = restore is not None or stage1 is not None
        return build_net(hp, self.stats, label_dim=label_dim, pretrained=not from_checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict holds every weight and label vector: loading must not fetch or fit them again. Heads that
        # keep no label vectors (linear, csra, ml_decoder without label-vector queries) restore with d = 0.
        label_dim = next((v.shape[1] for k, v in self.state_dict().items() if k.endswith("label_vectors")), 0)
        hparams = {
            k: OmegaConf.to_container(v, enum_to_str=True) if isinstance(v, DictConfig) else v
            for k, v in checkpoint["hyper_parameters"].items()
        }
        hparams["restore"] = {"label_dim": int(label_dim)}
        # Plain containers only, so the checkpoint loads with torch.load(weights_only=True).
        checkpoint["hyper_parameters"] = hparams

    def train(self, mode: bool = True) -> MLGCNModule:
        """Train / eval mode; a frozen representation stays in eval mode (BatchNorm statistics unchanged)."""
        super().train(mode)
        if self.hparams.freeze == "representation":
            for m in self.net.representation():
                m.eval()
        return self

    # ------------------------------------------------------------------ forward / steps
    def forward(self, images: torch.Tensor) -> ModelOutput:
        return self.net(images)

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[ModelOutput, LossOutput]:
        output = self(batch["image"])
        return output, self.loss_fn(output, batch["target"])

    def predict_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the ensemble logits, averaged over the test-time augmentations in ``self.tta``.

        ``tta`` entries: ``"hflip"`` (horizontal flip) and ``"scale:<factor>"`` (bilinear resize of the input);
        every combination of the listed scales (and 1.0) with and without the flip is averaged.
        """
        views = [images]
        for t in self.tta:
            if t.startswith("scale:"):
                x = images.float() / 255.0 if images.dtype == torch.uint8 else images
                factor = float(t.split(":", 1)[1])
                views.append(torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear"))
            elif t != "hflip":
                raise ValueError(f"unknown test-time augmentation {t!r}; known: 'hflip', 'scale:<factor>'")
        if "hflip" in self.tta:
            views += [v.flip(-1) for v in views]
        return torch.stack([torch.sigmoid(self(v).logits.float()) for v in views]).mean(0)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        _, loss = self._loss(batch)
        bs = batch["image"].shape[0]
        if self.hparams.on_nonfinite == "skip":
            if not bool(torch.isfinite(loss.total)):  # one host sync per step: the price of deciding per batch
                self.skipped_nonfinite += 1
                terms = {k: float(v.detach()) for k, v in loss.terms.items()}
                log.warning(
                    "non-finite loss at step %d %s: batch skipped (%d so far)",
                    self.global_step,
                    terms,
                    self.skipped_nonfinite,
                )
                return None  # Lightning skips backward and the optimizer step
        else:
            self.nonfinite.observe(self.global_step, loss.total, loss.terms)
        # Not prog_bar: Lightning converts progress-bar values with .item() after every step (a device sync).
        # Loggers read train/loss_step every trainer.log_every_n_steps; callbacks.ProgressBar shows it per refresh.
        self.log("train/loss", loss.total, on_step=True, on_epoch=True, batch_size=bs)
        if len(loss.terms) > 1:
            self.log_dict({f"train/{k}": v for k, v in loss.terms.items()}, on_step=False, on_epoch=True, batch_size=bs)
        return loss.total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.hparams.nonfinite_check_every_n_steps or self.trainer.log_every_n_steps
        if self.hparams.on_nonfinite == "error" and (self.global_step % max(1, every) == 0):
            self.nonfinite.raise_if_seen(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        if self.hparams.on_nonfinite == "error":
            self.nonfinite.raise_if_seen(self.current_epoch)
        if self.skipped_nonfinite:
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model (class list, experts, backbone...) naming the difference."""
        saved = checkpoint.get("hyper_parameters") or {}
        diff = checkpoint_differences(
            saved,
            dict(self.hparams),
            ["stats.classes", "num_experts", "backbone.name", "head._target_", "expert_width"],
        )
        if diff:
            raise ValueError("the checkpoint was made by another model: " + "; ".join(diff))

    def _eval_step(
        self, batch: Mapping[str, torch.Tensor], metrics: MultilabelMetrics, stage: str, labelled: bool = True
    ) -> None:
        if not labelled:  # no targets: no loss, only the predictions
            metrics.update(self.predict_probs(batch["image"]), batch["target"], batch["index"])
            return
        output, loss = self._loss(batch)
        probs = self.predict_probs(batch["image"]) if self.tta else torch.sigmoid(output.logits.float())
        metrics.update(probs, batch["target"], batch["index"])
        self.log(
            f"{stage}/loss",
            loss.total,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=batch["image"].shape[0],
        )

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, self.report_split, self.report_labelled)

    def _log_metrics(self, metrics: MultilabelMetrics, stage: str, labelled: bool = True) -> None:
        values = metrics.compute()
        metrics.reset()
        if not labelled:
            return
        # Already gathered over all ranks by torchmetrics: log as-is (no second reduction).
        self.log_dict({f"{stage}/{k}": float(v) for k, v in values.items()}, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, self.report_split, self.report_labelled)

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"index": batch["index"], "probs": self.predict_probs(batch["image"])}

    # ------------------------------------------------------------------ optimisation
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``trainer.gradient_clip_val`` for every precision, fused optimizers included
        (:mod:`mlgcn_lt.training.precision`)."""
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(as_config(self.hparams.optimizer))(
            params=[p for p in self.parameters() if p.requires_grad]
        )
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = instantiate(as_config(self.hparams.scheduler))(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }
