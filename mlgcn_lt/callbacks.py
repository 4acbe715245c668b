"""Lightning callbacks of the framework."""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

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


class RNGState(L.Callback):
    """Saves the torch / CUDA / numpy / Python RNG states with every checkpoint and restores them when a resumed run
    starts its first epoch, so a resumed run draws the same random numbers (e.g. dropout) as an uninterrupted one.

    Data augmentation does not depend on these states (it is seeded per sample: see ``data/dataset.py``).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        numpy_state = {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        }  # tensors and scalars: weights_only-safe
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class Preemption(L.Callback):
    """SIGTERM / SIGUSR1 / SIGUSR2 (SLURM preemption or time limit): save ``last.ckpt`` at the next training step
    and stop cleanly, so a requeued or restarted job resumes instead of losing the epoch.

    Ranks agree on the step to stop at (checked every ``check_every_n_steps``); a handler that was installed before
    (submitit's requeue on SIGUSR2) is called after the checkpoint is written.
    """

    def __init__(
        self, signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGUSR1", "SIGUSR2"), check_every_n_steps: int = 1
    ) -> None:
        self.signals = tuple(signals)
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for name in self.signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.should_stop or trainer.global_step % self.check_every_n_steps:
            return
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        cb = trainer.checkpoint_callback
        path = Path(cb.dirpath if cb is not None and cb.dirpath else trainer.default_root_dir) / "last.ckpt"
        trainer.save_checkpoint(path)
        name = signal.Signals(self.received).name if self.received else "a signal on another rank"
        log.warning(
            "%s: saved %s at step %d and stopping; run the same command to resume", name, path, trainer.global_step
        )
        trainer.should_stop = True
        trainer.preempted = True  # read by train(): no test, no metrics.json, so the run stays resumable
        previous = self._previous.get(self.received) if self.received else None
        if callable(previous):  # e.g. submitit: requeue the job now that the checkpoint exists
            previous(self.received, None)


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, also showing the latest ``train/loss``: read once per refresh (``refresh_rate`` steps),
    where ``self.log(..., prog_bar=True, on_step=True)`` would copy it to the host, a device sync, after every step."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss_step") if trainer.training else None
        if loss is not None:
            items["train/loss"] = f"{float(loss):.4g}"
        return items
