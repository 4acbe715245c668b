"""MLGCNModule: builds backbone / pooling / attention / heads / experts / loss from their configs and trains them.

The module receives its parts as configs (``_recursive_: false``) plus the training label statistics, and saves
them as hyper-parameters: a checkpoint alone rebuilds the model (``MLGCNModule.load_from_checkpoint(path)``).

Decoupled training (cRT, Kang et al. ICLR 2020; ``mlgcn_lt/training/decoupled.py``): ``decoupled.init_from``
starts from another run's checkpoint (all weights, or only the representation with ``decoupled.reset_heads``),
``decoupled.freeze="representation"`` keeps the trunk and the expert stages fixed (no gradients, BatchNorm
statistics frozen: eval mode) so that only the heads train.

Checkpoints of earlier versions (flat ``init_from`` / ``reset_heads`` / ``freeze``, ``scheduler_interval``,
``on_nonfinite``) load through :meth:`MLGCNModule.load_from_checkpoint` / :meth:`MLGCNModule.from_checkpoint`,
which rename them (:func:`upgrade_hparams`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlgcn_lt.config.schemas import split_group_keys
from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.evaluation.metrics import MultilabelMetrics
from mlgcn_lt.losses.base import LossOutput, build_loss
from mlgcn_lt.models.experts import ModelOutput, MultiExpertNet
from mlgcn_lt.models.factory import as_config, build_net
from mlgcn_lt.training.decoupled import (
    DecoupledConfig,
    Freeze,
    Stage1,
    freeze_representation,
    load_stage1,
    read_stage1,
)
from mlgcn_lt.training.guards import checkpoint_differences
from mlgcn_lt.training.precision import clip_gradients
from mlgcn_lt.utils.checkpoints import read_checkpoint

log = logging.getLogger(__name__)

Config = DictConfig | Mapping[str, Any]

#: Hyper-parameters of earlier versions -> where they live now (:func:`upgrade_hparams`).
RENAMED_HPARAMS = {
    "init_from": "decoupled.init_from",
    "reset_heads": "decoupled.reset_heads",
    "freeze": "decoupled.freeze",
    "scheduler_interval": "scheduler.interval",
    "on_nonfinite": "callbacks.nonfinite.policy (a training option, not the model's)",
    "nonfinite_check_every_n_steps": "callbacks.nonfinite.check_every_n_steps (a training option)",
}


def upgrade_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters with the names of earlier versions moved to today's (``RENAMED_HPARAMS``):
    ``init_from`` / ``reset_heads`` / ``freeze`` into ``decoupled``, ``scheduler_interval`` into ``scheduler``;
    the non-finite policy is a callback now and is dropped."""
    hp = dict(hparams)
    decoupled = dict(hp.pop("decoupled", None) or {})
    for key in ("init_from", "reset_heads", "freeze"):
        if key in hp:
            decoupled.setdefault(key, hp.pop(key))
    if decoupled:
        hp["decoupled"] = decoupled
    interval = hp.pop("scheduler_interval", None)
    if interval is not None and hp.get("scheduler") is not None:
        hp["scheduler"] = {"interval": interval, **dict(hp["scheduler"])}
    for key in ("on_nonfinite", "nonfinite_check_every_n_steps"):
        hp.pop(key, None)
    return hp


def plain(value: Any) -> Any:
    """Plain containers for a checkpoint (``torch.load(weights_only=True)``): configs, dataclasses, enums."""
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, enum_to_str=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def scheduler_parts(scheduler: Config) -> tuple[DictConfig, str]:
    """``model.scheduler`` split into the scheduler's own config and Lightning's ``interval`` (epoch / step)."""
    cfg, own = split_group_keys("model/scheduler", OmegaConf.to_container(as_config(scheduler), enum_to_str=True))
    interval = str(own["interval"])
    if interval not in ("epoch", "step"):
        raise ValueError(f"model.scheduler.interval={interval!r}: expected 'epoch' or 'step'")
    return OmegaConf.create(cfg), interval


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
        num_experts: int = 1,
        expert_init: Literal["pretrained_copy", "random"] = "pretrained_copy",
        expert_width: int | None = None,
        share_attention: bool = False,
        ensemble: Literal["logits", "probs"] = "logits",
        input_norm: Literal["imagenet", "unit"] = "imagenet",
        activation_checkpointing: bool = False,
        decoupled: DecoupledConfig = DecoupledConfig(),  # noqa: B008 (frozen, immutable)
        stats: Mapping[str, Any],
        data_info: Mapping[str, Any] | None = None,
        restore: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.stats = LabelStats.from_dict(dict(stats))
        self.classes = list(self.stats.classes)
        self.decoupled = DecoupledConfig.of(decoupled)
        init_from, reset_heads = self.decoupled.init_from, self.decoupled.reset_heads
        # A checkpoint of this model (restore) already holds the weights: init_from only applies to a new model.
        stage1 = self._read_stage1() if init_from and restore is None else None
        self.net = self._build_net(restore, stage1)
        if stage1 is not None:
            load_stage1(self.net, stage1, heads=not reset_heads)
            log.info("initialised from %s (%s)", init_from, "representation only" if reset_heads else "all weights")
        if self.decoupled.freeze == Freeze.representation:
            freeze_representation(self.net)
            self.train()
        self.loss_fn = build_loss(as_config(loss), self.stats)
        #: The split ``trainer.test`` scores (its metrics are logged as ``<report_split>/*``: ``test``, ``dev``...),
        #: and whether it has labels (without them: predictions gathered in ``test_metrics.last``, nothing logged).
        self.report_split = "test"
        self.report_labelled = True
        self.val_metrics = MultilabelMetrics(self.classes, self.stats.groups)
        self.test_metrics = MultilabelMetrics(self.classes, self.stats.groups)

    # ------------------------------------------------------------------ construction
    def _read_stage1(self) -> Stage1:
        hp = self.hparams
        return read_stage1(
            self.decoupled.init_from, classes=self.classes, num_experts=hp.num_experts, backbone=hp.backbone["name"]
        )

    def _build_net(self, restore: Mapping[str, Any] | None, stage1: Stage1 | None = None) -> MultiExpertNet:
        """The network (:func:`~mlgcn_lt.models.factory.build_net`); weights from a checkpoint (``restore``, or
        stage 1 of cRT) mean no pretrained download, and no label-embedding fit when the heads come with them."""
        hp = self.hparams
        label_dim = None
        if restore is not None or (stage1 is not None and not self.decoupled.reset_heads):
            label_dim = int(restore["label_dim"] if restore is not None else stage1.label_dim)
        from_checkpoint = restore is not None or stage1 is not None
        return build_net(hp, self.stats, label_dim=label_dim, pretrained=not from_checkpoint)

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], strict: bool = True, **overrides: Any) -> MLGCNModule:
        """The model of a checkpoint already read (e.g. by :func:`~mlgcn_lt.utils.checkpoints.read_checkpoint`):
        hyper-parameters of earlier versions renamed (:func:`upgrade_hparams`), weights loaded, on the CPU."""
        model = cls(**{**upgrade_hparams(checkpoint["hyper_parameters"]), **overrides})
        model.on_load_checkpoint(dict(checkpoint))
        model.load_state_dict(checkpoint["state_dict"], strict=strict)
        return model

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        strict: bool = True,
        weights_only: bool | None = True,
        **overrides: Any,
    ) -> MLGCNModule:
        """Lightning's loader for this model's checkpoints, also those of earlier versions (renamed
        hyper-parameters); always ``weights_only`` (the checkpoints hold plain containers and tensors only)."""
        model = cls.from_checkpoint(read_checkpoint(checkpoint_path), strict=strict, **overrides)
        return model.to(map_location) if isinstance(map_location, str | torch.device) else model

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict holds every weight and label vector: loading must not fetch or fit them again. Heads that
        # keep no label vectors (linear, csra, ml_decoder without label-vector queries) restore with d = 0.
        label_dim = next((v.shape[1] for k, v in self.state_dict().items() if k.endswith("label_vectors")), 0)
        hparams = {k: plain(v) for k, v in checkpoint["hyper_parameters"].items()}
        hparams["restore"] = {"label_dim": int(label_dim)}
        # Plain containers only, so the checkpoint loads with torch.load(weights_only=True).
        checkpoint["hyper_parameters"] = hparams

    def train(self, mode: bool = True) -> MLGCNModule:
        """Train / eval mode; a frozen representation stays in eval mode (BatchNorm statistics unchanged)."""
        super().train(mode)
        if self.decoupled.freeze == Freeze.representation:
            for m in self.net.representation():
                m.eval()
        return self

    # ------------------------------------------------------------------ forward / steps
    def forward(self, images: torch.Tensor) -> ModelOutput:
        return self.net(images)

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[ModelOutput, LossOutput]:
        output = self(batch["image"])
        return output, self.loss_fn(output, batch["target"])

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the ensemble logits (test-time augmentation: :mod:`mlgcn_lt.evaluation.predict`)."""
        return torch.sigmoid(self(images).logits.float())

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """The loss and its terms (for callbacks: the non-finite policy, ``callbacks/nonfinite.py``)."""
        _, loss = self._loss(batch)
        bs = batch["image"].shape[0]
        # Not prog_bar: Lightning converts progress-bar values with .item() after every step (a device sync).
        # Loggers read train/loss_step every trainer.log_every_n_steps; callbacks.ProgressBar shows it per refresh.
        self.log("train/loss", loss.total, on_step=True, on_epoch=True, batch_size=bs)
        if len(loss.terms) > 1:
            self.log_dict({f"train/{k}": v for k, v in loss.terms.items()}, on_step=False, on_epoch=True, batch_size=bs)
        return {"loss": loss.total, "terms": {k: v.detach() for k, v in loss.terms.items()}}

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
            metrics.update(self.probs(batch["image"]), batch["target"], batch["index"])
            return
        output, loss = self._loss(batch)
        metrics.update(torch.sigmoid(output.logits.float()), batch["target"], batch["index"])
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
        return {"index": batch["index"], "probs": self.probs(batch["image"])}

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
        config, interval = scheduler_parts(self.hparams.scheduler)
        scheduler = instantiate(config)(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
