"""The training loader of exact resumption: its iterator starts on first use, and its position is checkpointed.

Two things made a resumed run draw other batches than an uninterrupted one (issue 13, item 0b):

* Lightning creates the first iterator of a resumed fit *before* it tells the sampler the epoch
  (``FitLoop.setup_data`` calls ``iter()``, ``on_advance_start`` then ``set_epoch``). With ``num_workers > 0`` the
  iterator prefetches indices at creation, so the first resumed epoch replayed epoch 0's sequence (and augmentation
  seeds). :class:`ResumableLoader` hands out a lazy iterator that creates the real one at the first ``next()``,
  after ``set_epoch``.
* A checkpoint written mid-epoch (``callbacks.preemption`` on SIGTERM) resumed the epoch from its first batch.
  :class:`ResumableLoader` implements ``state_dict`` / ``load_state_dict`` (Lightning stores them in the checkpoint
  for loaders that have them): the epoch and the batches handed out; a resumed run skips those positions of the same
  epoch's sequence, keeping their augmentation seeds.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`~mlgcn_lt.data.samplers.AugmentationSeeds` sampler (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consumed = 0  # batches handed out in the current epoch
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> _LazyIterator:  # type: ignore[override]
        return _LazyIterator(self)

    def _start(self) -> Any:
        """The real iterator of the current epoch (skipping what a checkpoint of this epoch had already consumed)."""
        sampler = self.sampler
        self._consumed = 0
        if self._resume is not None:
            state, self._resume = self._resume, None
            if hasattr(sampler, "skip") and state["epoch"] == self._epoch() and 0 < state["batches"] < len(self):
                sampler.skip = state["batches"] * int(self.batch_size)
                self._consumed = state["batches"]
        return super().__iter__()

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))  # Lightning may swap in its own sampler (overfit_batches)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": int(self._consumed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}


class _LazyIterator:
    """Creates the loader's iterator at the first ``next()``; counts the batches handed out."""

    def __init__(self, loader: ResumableLoader) -> None:
        self.loader = loader
        self.iterator: Any = None

    def __iter__(self) -> _LazyIterator:
        return self

    def __len__(self) -> int:
        return len(self.loader)

    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = self.loader._start()
        batch = next(self.iterator)
        self.loader._consumed += 1
        return batch
