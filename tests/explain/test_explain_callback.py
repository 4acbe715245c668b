"""callbacks.explain: opt-in, typed config; during training it writes contact sheets of fixed validation images."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ConfigKeyError

from mlgcn_lt.explain.callback import ExplainMaps


def test_explain_callback_is_opt_in_and_typed(tiny_cfg):
    assert "explain" not in tiny_cfg().callbacks
    cfg = tiny_cfg("callbacks=[default,explain]", "callbacks.explain.every_n_epochs=2")
    callback = instantiate(cfg.callbacks.explain)
    assert isinstance(callback, ExplainMaps) and callback.every_n_epochs == 2
    assert "model_checkpoint" in cfg.callbacks  # the defaults stay
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        tiny_cfg("callbacks=[default,explain]", "callbacks.explain.every_n_epoch=2")
    with pytest.raises(ValueError, match="callbacks.explain.method"):
        ExplainMaps(method="lime")


@pytest.mark.slow
def test_explain_callback_writes_sheets_during_training(tiny_cfg, tmp_path):
    from mlgcn_lt.training.train import train

    cfg = tiny_cfg(
        "callbacks=[default,explain]",
        "callbacks.explain.every_n_epochs=1",
        "callbacks.explain.num_images=3",
        "trainer.fast_dev_run=true",
        "model/label_embedding=random",
        "test=false",
    )
    train(cfg)
    sheets = sorted((tmp_path / "run" / "explain" / "epoch_000").glob("*.png"))
    assert len(sheets) == 3
