"""Preemption: a checkpoint on SIGTERM/SIGUSR1 before the scheduler stops the job."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class Preemption(L.Callback):
    """SIGTERM / SIGUSR1 / SIGUSR2 (SLURM preemption or time limit): save ``last.ckpt`` at the next training step
    and stop cleanly, so a requeued or restarted job resumes instead of losing the epoch.

    Ranks agree on the step to stop at (checked every ``check_every_n_steps``); a handler that was installed before
    (submitit's requeue on SIGUSR2) is called after the checkpoint is written. :attr:`saved` is that checkpoint
    once it is written (train() then neither tests nor writes ``metrics.json``: the run stays resumable).
    """

    def __init__(
        self, signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGUSR1", "SIGUSR2"), check_every_n_steps: int = 1
    ) -> None:
        self.signals = tuple(signals)
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.received: int | None = None
        #: The checkpoint written on a signal (the fit then stopped early, on purpose), else ``None``.
        self.saved: Path | None = None
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
        self.saved = path
        previous = self._previous.get(self.received) if self.received else None
        if callable(previous):  # e.g. submitit: requeue the job now that the checkpoint exists
            previous(self.received, None)
