"""Weight averaging callbacks: EMA of the weights, and stochastic weight averaging (SWA).

Both are Lightning's callbacks with the few changes this pipeline needs (validate / test the best or final checkpoint
after fitting, ``weights_only`` checkpoints, typed options for the config schemas).

What a checkpoint holds with ``callbacks/averaging=ema``: ``state_dict`` = the **averaged** weights (what
``load_from_checkpoint``, ``eval.py``, ``submit`` and the post-fit validation / test use), ``current_model_state`` =
the **raw** weights, ``averaging_state`` = the number of updates; resuming restores both.
With ``callbacks/averaging=swa``: ``checkpoints/swa.ckpt`` holds the averaged model at the end of training (its
``state_dict``), which train() then validates, tunes thresholds on and tests; the epoch checkpoints hold raw weights.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, StochasticWeightAveraging, WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

log = logging.getLogger(__name__)


def ema_update(average: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor, *, decay: float):
    """``decay * average + (1 - decay) * current`` as a lerp: a tensor that does not change (a frozen weight)
    stays bit-identical. Integer buffers (BatchNorm's ``num_batches_tracked``) take the current value."""
    if not average.is_floating_point():
        return current
    return torch.lerp(average, current.to(average.dtype), 1.0 - decay)


class EMA(WeightAveraging):
    """Exponential moving average of the weights and buffers (Polyak & Juditsky 1992; e.g. timm's ModelEma):
    ``ema ← decay · ema + (1 − decay) · w`` after every ``update_every_n_steps``-th optimizer step from step
    ``update_starting_at_step`` (0-based), the first update copying ``w``.

    Lightning's ``WeightAveraging`` does the bookkeeping: validation during fitting swaps the average in, checkpoints
    store it as ``state_dict`` (raw weights under ``current_model_state``), training ends with the average in the
    module. Unlike Lightning's ``EMAWeightAveraging``, the average lives only while fitting: a later
    ``trainer.validate`` / ``test`` from a checkpoint evaluates that checkpoint's ``state_dict`` (the average), not
    its raw weights, which Lightning would otherwise load back into the module.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int = 0,
        use_buffers: bool = True,
        device: str | None = None,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.averaging.decay must be in [0, 1), got {decay}")
        if update_every_n_steps < 1 or update_starting_at_step < 0:
            raise ValueError(
                "callbacks.averaging: update_every_n_steps must be >= 1 and update_starting_at_step >= 0, got "
                f"{update_every_n_steps} and {update_starting_at_step}"
            )
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=functools.partial(ema_update, decay=decay))
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None or step_idx < self.update_starting_at_step:
            return False
        return (step_idx - self.update_starting_at_step) % self.update_every_n_steps == 0

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # the module now holds the average (on_train_end); later stages evaluate checkpoints
            self._average_model = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # Outside fitting the module keeps the checkpoint's state_dict, i.e. the averaged weights.


class SWA(StochasticWeightAveraging):
    """Stochastic weight averaging (Izmailov et al., UAI 2018) with Lightning's callback: from epoch
    ``swa_epoch_start`` (an int, or a fraction of ``max_epochs``) the learning rate anneals to ``swa_lrs`` over
    ``annealing_epochs`` and the weights are averaged once per epoch; at the end the average replaces the weights
    and, for models with BatchNorm, one extra pass over the training data recomputes its statistics.

    Lightning averages the weights found at the *start* of each SWA epoch (so the last epoch's updates are not in
    the average; tested). The result is that final model, not the best epoch: it is written to
    ``<checkpoints>/swa.ckpt`` and train() validates and tests it. SWA runs to ``max_epochs``: early stopping is
    refused.
    """

    def __init__(
        self,
        swa_lrs: float = 1e-5,
        swa_epoch_start: Any = 0.8,  # int (an epoch) or float (a fraction): a float schema would turn 2 into 2.0
        annealing_epochs: int = 1,
        annealing_strategy: Literal["cos", "linear"] = "cos",
        device: str | None = "cpu",
        filename: str = "swa.ckpt",
    ) -> None:
        super().__init__(
            swa_lrs=float(swa_lrs),
            swa_epoch_start=swa_epoch_start,
            annealing_epochs=annealing_epochs,
            annealing_strategy=annealing_strategy,
            device=device,
        )
        self.filename = filename
        #: The checkpoint of the averaged model, once training has finished its SWA epochs (read by train()).
        self.final_checkpoint: str | None = None
        self._transferred = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and any(isinstance(c, EarlyStopping) for c in trainer.callbacks):
            raise ValueError(
                "callbacks/averaging=swa averages the epochs from swa_epoch_start to max_epochs; early stopping "
                "would end training before: disable it with callbacks.early_stopping=null"
            )
        super().setup(trainer, pl_module, stage)

    def transfer_weights(self, src_pl_module: L.LightningModule, dst_pl_module: L.LightningModule) -> None:
        super().transfer_weights(src_pl_module, dst_pl_module)
        self._transferred = True

    def reset_batch_norm_and_save_state(self, pl_module: L.LightningModule) -> None:
        """Lightning resets every BatchNorm before the statistics pass; one in eval mode (a frozen representation,
        ``model.decoupled.freeze``) would not recompute its statistics, so it keeps them."""
        frozen = {
            m: {k: getattr(m, k).clone() for k in ("running_mean", "running_var", "num_batches_tracked")}
            for m in pl_module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training and m.track_running_stats
        }
        super().reset_batch_norm_and_save_state(pl_module)
        for m, buffers in frozen.items():
            for k, v in buffers.items():
                setattr(m, k, v)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._transferred:
            log.warning("training stopped before the last SWA epoch: no averaged model, the raw weights are kept")
            return
        cb = trainer.checkpoint_callback
        folder = Path(cb.dirpath) if cb is not None and cb.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        path = folder / self.filename
        trainer.save_checkpoint(path)
        self.final_checkpoint = str(path)
        log.info("SWA: averaged model saved to %s", path)
