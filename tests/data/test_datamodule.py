"""CXRDataModule: setup, statistics, carved splits, loaders of uint8 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import make_datamodule, write_cxr_lt_dir
from mlgcn_lt.data.samplers import RandomSampler
from mlgcn_lt.data.tables import TableError


def _dm(root, **kw):
    return make_datamodule(root, **kw)


def test_setup_reads_splits_and_computes_training_stats(tiny_cxr_lt):
    dm = _dm(tiny_cxr_lt)
    dm.setup("fit")
    assert [len(dm.tables[s]) for s in ("train", "val", "test")] == [40, 16, 16]
    assert len(dm.classes) == 26 and dm.stats.num_images == 40
    np.testing.assert_array_equal(dm.stats.counts, np.nansum(dm.labels("train"), 0))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 1, 32, 32)
    assert batch["target"].shape == (4, 26) and batch["index"].shape == (4,)
    val = next(iter(dm.val_dataloader()))
    assert val["index"].tolist() == [0, 1, 2, 3]


def test_missing_splits_are_carved_by_patient(tiny_cxr_lt):
    dm = _dm(tiny_cxr_lt, val_csv=None, test_csv=None, split={"val_fraction": 0.2, "test_fraction": 0.2})
    dm.setup()
    sizes = [len(dm.tables[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 40 and all(n > 0 for n in sizes)
    subj = {s: set(dm.tables[s].meta["subject_id"]) for s in ("train", "val", "test")}
    assert not subj["train"] & subj["val"] and not subj["train"] & subj["test"]


def test_sampler_factory_is_injected(tiny_cxr_lt):
    calls = []

    def factory(labels, seed):
        calls.append((labels.shape, seed))
        return RandomSampler(labels, num_samples=8, seed=seed)

    dm = _dm(tiny_cxr_lt, sampler=factory, seed=7)
    dm.setup()
    loader = dm.train_dataloader()
    assert calls == [((40, 26), 7)] and len(loader) == 2


def test_needs_setup_and_train_csv(tmp_path):
    with pytest.raises(RuntimeError, match="setup"):
        _ = _dm(tmp_path).classes
    write_cxr_lt_dir(tmp_path, {"train": 4})
    with pytest.raises(TableError, match="not found"):
        _dm(tmp_path).setup()
