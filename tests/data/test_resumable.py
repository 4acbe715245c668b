"""Exact resumption, fast parts (issue 13, 0b): the training loader draws the epoch it is told even when iterated
first (as Lightning does on resume), and skips what a mid-epoch checkpoint consumed. The SIGKILL / SIGTERM
end-to-end runs are in test_resume.py."""

from __future__ import annotations

import pytest
import torch

from helpers import make_datamodule
from mlgcn_lt.data.samplers import CycleClassSampler


def _loader(root, workers: int):
    dm = make_datamodule(root, num_workers=workers, sampler=lambda labels, seed: CycleClassSampler(labels, seed=seed))
    dm.setup("fit")
    return dm.train_dataloader()


def _indices(batches) -> list[int]:
    return [i for b in batches for i in b["index"].tolist()]


def test_the_epoch_set_after_iter_is_the_epoch_drawn_with_workers(tiny_cxr_lt):
    workers = 1  # a worker prefetches indices when the iterator is created
    loader = _loader(tiny_cxr_lt, workers)
    loader.sampler.set_epoch(1)
    expected = [b["image"] for b in loader]
    fresh = _loader(tiny_cxr_lt, workers)
    it = iter(fresh)  # Lightning's FitLoop.setup_data on resume: iter() before set_epoch
    fresh.sampler.set_epoch(1)
    got = [b["image"] for b in it]
    assert len(got) == len(expected) == 10
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)  # same images, same augmentations


@pytest.mark.parametrize("workers", [0, 1])
def test_a_mid_epoch_state_resumes_at_the_next_batch_of_the_same_draw(tiny_cxr_lt, workers):
    loader = _loader(tiny_cxr_lt, workers)
    loader.sampler.set_epoch(2)
    full = list(loader)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 3}

    resumed = _loader(tiny_cxr_lt, workers)
    resumed.load_state_dict(state)
    it = iter(resumed)
    resumed.sampler.set_epoch(2)
    rest = list(it)
    assert _indices(rest) == _indices(full[3:])
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(rest, full[3:], strict=True))
    assert resumed.state_dict() == {"epoch": 2, "batches": 10}
    resumed.sampler.set_epoch(3)  # the skip applies once: the next epoch is whole
    assert len(list(resumed)) == 10


def test_an_end_of_epoch_state_starts_the_next_epoch_whole(tiny_cxr_lt):
    loader = _loader(tiny_cxr_lt, 0)
    loader.load_state_dict({"epoch": 0, "batches": 10})
    it = iter(loader)
    loader.sampler.set_epoch(1)
    assert len(list(it)) == 10
