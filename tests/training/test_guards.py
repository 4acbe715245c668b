"""Guards (mlgcn_lt/training/guards.py): impossible configurations refused before any data is read, saying what to
change; a checkpoint of another model refused naming the difference."""

from __future__ import annotations

import pytest

from mlgcn_lt.training.guards import check_config
from mlgcn_lt.training.train import train


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_experts=0", "model.num_experts=0: at least one expert"),
        ("data.image_size=100", "data.image_size=100 is not a positive multiple of 32.*use e.g. 96 or 128"),
        ("data.batch_size=0", "data.batch_size=0: must be at least 1"),
        ("data.loader.eval_batch_size=0", "data.loader.eval_batch_size=0: must be at least 1"),
    ],
)
def test_impossible_combinations_say_what_to_change(tiny_cfg, override, message):
    from mlgcn_lt.training.train import plain_config

    with pytest.raises(ValueError, match=message):
        check_config(plain_config(tiny_cfg(override)))


@pytest.mark.parametrize("override", ["trainer.max_epochs=0", "trainer.max_steps=0", "trainer.limit_train_batches=0"])
def test_zero_training_steps_refused_at_compose_time(tiny_cfg, override):
    from mlgcn_lt.training.train import plain_config

    with pytest.raises(ValueError, match=f"{override}: no training step would run"):
        check_config(plain_config(tiny_cfg(override)))


@pytest.mark.slow  # trains through train() / fit
def test_resuming_with_another_number_of_experts_names_the_difference(tiny_cfg, tmp_path):
    first = tiny_cfg("trainer.max_epochs=1", "model/label_embedding=random")
    ckpt = train(first)["best_checkpoint"]
    second = tiny_cfg(
        "trainer.max_epochs=2", "model/label_embedding=random", "model.num_experts=2", f"ckpt_path={ckpt}"
    )
    with pytest.raises(ValueError, match="num_experts: checkpoint 1, this model 2"):
        train(second)
