"""NonFinite: what training does with a NaN / inf loss (``callbacks.nonfinite``): stop naming the step and the term,
or skip the batch's update and count it."""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import torch

from mlgcn_lt.training.nonfinite import NonFiniteTracker

log = logging.getLogger(__name__)


class NonFinite(L.Callback):
    """``policy=error``: the loss and its terms (``training_step``'s ``{"loss", "terms"}``) are tracked on the device
    without a host sync and checked every ``check_every_n_steps`` optimizer steps (``null``: at logging steps,
    ``trainer.log_every_n_steps``) and at every epoch end; a non-finite value stops training with
    :class:`~mlgcn_lt.training.nonfinite.NonFiniteLossError` naming its global step and term.

    ``policy=skip``: each batch's loss is checked before its backward pass (one host sync per step, and under DDP
    one all-reduce, so that every rank skips the same batch); a non-finite one leaves the weights and the optimizer
    state unchanged (every gradient is dropped before the optimizer step, which then skips every parameter; with
    ``16-mixed`` and a fused optimizer the gradient scaler skips the step and halves its scale), is logged with its
    terms and counted in ``train/skipped_nonfinite``. Its ``train/loss`` is logged like any batch's.
    """

    def __init__(self, policy: Literal["error", "skip"] = "error", check_every_n_steps: int | None = None) -> None:
        if policy not in ("error", "skip"):
            raise ValueError(f"callbacks.nonfinite.policy={policy!r}: expected 'error' or 'skip'")
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"callbacks.nonfinite.check_every_n_steps={check_every_n_steps}: expected >= 1 or null")
        self.policy = policy
        self.check_every_n_steps = check_every_n_steps
        self.tracker = NonFiniteTracker()
        self.skipped = 0
        self._step = 0
        self._bad_batch = False  # this batch's loss was not finite (on some rank)
        self._drop_update = False  # the next optimizer step must not change anything

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._step = trainer.global_step  # the step the batch's loss belongs to (global_step moves on after it)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.policy == "skip":  # one host sync per step: the price of deciding per batch
            bad = not bool(torch.isfinite(loss.detach()).all())
            if trainer.strategy.reduce_boolean_decision(bad, all=False):
                self._bad_batch = self._drop_update = True  # with gradient accumulation: the whole update

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._drop_update:
            return
        self._drop_update = False
        # A gradient scaler (16-mixed) whose inf check runs inside its step (fused optimizers) must see the batch's
        # gradients: NaN ones make it skip the step (and lower its scale). Otherwise: no gradients at all, and torch
        # optimizers skip every parameter without one (no update, no state change; a scaler that already checked
        # the gradients, before this hook, steps nothing either).
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        checked_in_step = scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and checked_in_step:
                    p.grad.fill_(float("nan"))
                else:
                    p.grad = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss, terms = _loss_and_terms(outputs)
        if self.policy == "skip":
            if self._bad_batch:
                self._bad_batch = False
                self.skipped += 1
                values = {k: float(v) for k, v in terms.items()}
                log.warning(
                    "non-finite loss at step %d %s: batch skipped (%d so far)", self._step, values, self.skipped
                )
            return
        if loss is None:
            return
        self.tracker.observe(self._step, loss, terms)
        every = self.check_every_n_steps or trainer.log_every_n_steps
        if trainer.global_step % max(1, every) == 0:
            self.tracker.raise_if_seen(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.policy == "error":
            self.tracker.raise_if_seen(trainer.current_epoch)
        if self.skipped:
            pl_module.log("train/skipped_nonfinite", float(self.skipped))


def _loss_and_terms(outputs: Any) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """``training_step``'s loss and its terms (a plain loss tensor has no terms)."""
    if isinstance(outputs, torch.Tensor):
        return outputs, {}
    if isinstance(outputs, dict):
        return outputs.get("loss"), dict(outputs.get("terms") or {})
    return None, {}
