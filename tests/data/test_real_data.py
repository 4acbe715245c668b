"""The real NIH sample beside the repository (../shared/data): skipped with a reason in a user's clone."""

from __future__ import annotations

import pytest

from helpers import NIH_SAMPLE, compose_config
from mlgcn_lt.training.train import train

pytestmark = pytest.mark.skipif(
    not NIH_SAMPLE.is_dir(), reason="../shared/data/nih_cxr14_sample is absent (only CI and developers have it)"
)


@pytest.mark.slow  # trains through train() / fit
def test_nih_sample_trains_on_real_xrays(tmp_path, hydra_cleanup):
    cfg = compose_config(
        [
            "data=nih_cxr14_sample",
            "trainer=cpu",
            "data.num_workers=0",
            "data.image_size=64",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=3",
            "callbacks.early_stopping=null",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert len([k for k in metrics if k.startswith("test/AP/")]) == 15
    assert 0.0 < metrics["test/mAP"] < 1.0
    assert metrics["test/n_classes_without_positives"] == 0
