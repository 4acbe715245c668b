"""Configs: every option composes; typos and invalid choices fail at compose time naming the valid ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException

from helpers import compose_config
from mlgcn_lt.config import CONF_DIR
from mlgcn_lt.config.groups import config_options

GROUPS = [
    "data",
    "model/backbone",
    "model/pooling",
    "model/head",
    "model/label_embedding",
    "model/attention",
    "model/loss",
    "model/optimizer",
    "model/scheduler",
    "trainer",
    "logger",
    "callbacks",
    "callbacks/averaging",
    "debug",
]


def options(group: str) -> list[str]:
    return config_options(group)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group, tmp_path, hydra_cleanup):
    for option in options(group):
        if group == "callbacks" and option not in ("default", "none"):
            continue  # the individual callbacks are composed through callbacks/default
        cfg = compose_config([f"{group}={option}"], tmp_path)
        assert cfg is not None


def test_every_target_yaml_references_its_schema():
    for path in CONF_DIR.rglob("*.yaml"):
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data, dict) and "_target_" in data:
            rel = path.relative_to(CONF_DIR).with_suffix("").as_posix()
            assert f"/schema/{rel}@_here_" in data.get("defaults", []), f"{path} does not list its schema first"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.pooling.gama=1", "Key 'gama' not in"),
        ("model.head.form=papr", "Invalid value 'papr', expected one of \\[paper, release\\]"),
        ("data.image_size=big", "could not be converted to Integer"),
        ("data.imagesize=3", "Key 'imagesize' not in"),
        ("trainer.max_epoch=3", "Key 'max_epoch' not in"),
        ("model.expert_init=copy", "expected one of \\[pretrained_copy, random\\]"),
    ],
)
def test_typos_fail_at_compose_time(override, message, tmp_path, hydra_cleanup):
    with pytest.raises(ConfigCompositionException) as e:
        compose_config([override], tmp_path)
    assert pytest.importorskip("re").search(message, f"{e.value} {e.value.__cause__}")


def test_unknown_option_lists_the_known_ones(tmp_path, hydra_cleanup):
    with pytest.raises(MissingConfigException, match=r"(?s)Available options in 'model/pooling'.*avg.*max"):
        compose_config(["model/pooling=mx"], tmp_path)


def test_default_config_is_the_embedded_vanilla_ml_gcn(tmp_path, hydra_cleanup):
    cfg = compose_config([], tmp_path)
    assert cfg.data.synthetic is not None and cfg.data.format == "cxr_lt"
    assert cfg.model.num_experts == 1 and cfg.model.pooling._target_.endswith("MaxPool")
    assert cfg.model.loss._target_.endswith("BCELoss") and cfg.data.sampler._target_.endswith("RandomSampler")
    assert cfg.model.optimizer.lr == 1e-4 and list(cfg.model.optimizer.betas) == [0.9, 0.99]
    for key in ("root", "train_csv", "val_csv", "test_csv", "image_size", "batch_size", "num_workers"):
        assert key in cfg.data
    assert "experiment" not in cfg


def test_gitignore_covers_run_outputs_and_local_config():
    ignored = (Path(CONF_DIR).parent / ".gitignore").read_text().split()
    for entry in ("/outputs/", "conf/local/", ".venv/", ".env", "/data/"):
        assert entry in ignored
