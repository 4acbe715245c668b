"""Non-finite losses: tracked on the device between checks, raised naming the step and the term."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the term."""


class NonFiniteTracker:
    """Remembers, on the device and without a host sync, the first step whose loss (or a term of it) was not finite;
    :meth:`raise_if_seen` reads that record on the host (one sync) when asked, e.g. at logging steps."""

    def __init__(self) -> None:
        self.step: torch.Tensor | None = None  # first bad global step, -1 while none
        self.terms: dict[str, torch.Tensor] = {}  # which terms were bad at that step

    def observe(self, step: int, total: torch.Tensor, terms: Mapping[str, torch.Tensor]) -> None:
        bad = {name: ~torch.isfinite(v.detach()).all() for name, v in {"total": total, **terms}.items()}
        if self.step is None:
            self.step = torch.full((), -1, dtype=torch.long, device=total.device)
        first = torch.stack(list(bad.values())).any() & (self.step < 0)
        self.step = torch.where(first, torch.as_tensor(step, device=total.device), self.step)
        for name, flag in bad.items():
            self.terms[name] = torch.where(first, flag, self.terms.get(name, torch.zeros_like(flag)))

    def raise_if_seen(self, epoch: int) -> None:
        if self.step is None or int(self.step) < 0:
            return
        names = [n for n, b in self.terms.items() if bool(b)]
        raise NonFiniteLossError(
            f"non-finite training loss at global step {int(self.step)} (detected in epoch {epoch}): "
            f"{', '.join(names)} is NaN or infinite. Training stopped; the checkpoints written before are intact. "
            "Try a lower learning rate, trainer.precision=32-true or bf16-mixed, or check the data; "
            "callbacks.nonfinite.policy=skip skips such batches instead (and counts them)."
        )
