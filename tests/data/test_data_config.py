"""Data configs read as a few typed blocks (``columns``, ``loader``, ``bad_images``, ``split``, ``groups``) on top of
``conf/data/_base.yaml``; ``data.max_epochs`` is a typed key of the config that the trainer reads, not an argument
of the DataModule."""

from __future__ import annotations

import inspect
import re

import pytest
from hydra.errors import ConfigCompositionException, InstantiationException

from helpers import compose_config
from mlgcn_lt.config.groups import config_options
from mlgcn_lt.data.config import BadImagesConfig, ColumnsConfig, GroupSizes, LoaderConfig, SplitConfig
from mlgcn_lt.data.datamodule import CXRDataModule, build_datamodule
from mlgcn_lt.data.tables import TableError

#: What data=csv needs besides its own file (no dataset of its own).
CSV_NEEDS = ["data.root=/nowhere", "data.train_csv=t.csv", "data.columns.label_columns=[Edema,Mass]"]


def test_base_is_shared_not_an_option():
    assert config_options("data") == ["csv", "cxr_lt", "nih_cxr14", "nih_cxr14_sample", "synthetic"]


@pytest.mark.parametrize("option", config_options("data"))
def test_every_data_option_builds_a_datamodule_of_typed_blocks(option, tmp_path, hydra_cleanup):
    cfg = compose_config([f"data={option}", *(CSV_NEEDS if option == "csv" else [])], tmp_path)
    dm = build_datamodule(cfg.data)
    blocks = {"columns": ColumnsConfig, "loader": LoaderConfig, "bad_images": BadImagesConfig}
    blocks |= {"split": SplitConfig, "groups": GroupSizes}
    for name, cls in blocks.items():
        assert type(getattr(dm, name)) is cls, name
    assert dm.bad_images.policy == "error" and type(dm.bad_images.policy) is str  # a plain string, not an enum
    assert dm.bad_images.check == "header" and dm.report_dir == tmp_path
    assert dm.eval_batch_size == (cfg.data.loader.eval_batch_size or cfg.data.batch_size)
    # the epoch budget: a typed key of the data config, read by the trainer, not an argument of the DataModule
    assert isinstance(cfg.data.max_epochs, int) and cfg.trainer.max_epochs == cfg.data.max_epochs
    assert "max_epochs" not in inspect.signature(CXRDataModule).parameters and not hasattr(dm, "max_epochs")


def test_block_overrides_reach_the_datamodule(tmp_path, hydra_cleanup):
    cfg = compose_config(
        [
            "data=csv",
            *CSV_NEEDS,
            "data.columns.path_column=file",
            "data.columns.group_column=pid",
            "data.bad_images.policy=skip",
            "data.bad_images.check=full",
            "data.loader.eval_batch_size=7",
            "data.split.seed=5",
            "data.groups.head=1",
        ],
        tmp_path,
    )
    dm = build_datamodule(cfg.data)
    assert dm.reader_options == {
        "path_column": "file",
        "label_columns": ["Edema", "Mass"],
        "id_columns": [],
        "group_column": "pid",
        "uncertain": "error",
    }
    assert (dm.bad_images.policy, dm.bad_images.check, dm.eval_batch_size) == ("skip", "full", 7)
    assert (dm.split_seed, dm.groups.head) == (5, 1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.on_bad_image=skip",
            "Key 'on_bad_image' not in 'CXRDataModuleSchema'",
        ),  # the flat key of before the blocks
        ("data.bad_images.policy=drop", "Invalid value 'drop', expected one of [error, skip]"),
        ("data.columns.uncertain=maybe", "expected one of [error, ignore, zero, one]"),
        ("data.loader.prefetch=4", "Key 'prefetch' not in 'LoaderConfigSchema'"),
        ("data.max_epochs=many", "could not be converted to Integer"),
        ("data.max_epoch=3", "Key 'max_epoch' not in 'CXRDataModuleSchema'"),
    ],
)
def test_typos_in_blocks_fail_at_compose_time_naming_the_key(override, message, tmp_path, hydra_cleanup):
    with pytest.raises(ConfigCompositionException) as e:
        compose_config([override], tmp_path)
    assert re.search(re.escape(message), f"{e.value} {e.value.__cause__}")


def test_csv_without_label_columns_names_the_new_key(tmp_path, hydra_cleanup):
    cfg = compose_config(["data=csv", "data.root=/nowhere", "data.train_csv=t.csv"], tmp_path)
    with pytest.raises(InstantiationException) as e:
        build_datamodule(cfg.data)
    assert isinstance(e.value.__cause__, TableError)
    assert "data=csv needs data.columns.path_column and data.columns.label_columns" in str(e.value.__cause__)


def test_a_saved_config_with_the_old_flat_keys_still_builds():
    """A run's ``config.yaml`` written before the blocks (read by ``python -m mlgcn_lt.explain --split``)."""
    old = {
        "_target_": "mlgcn_lt.data.datamodule.CXRDataModule",
        "format": "csv",
        "root": "/nowhere",
        "train_csv": "t.csv",
        "path_column": "file",
        "label_columns": ["Edema"],
        "group_column": "pid",
        "eval_batch_size": 9,
        "on_bad_image": "skip",
        "validate_images": "none",
        "report_dir": None,
        "split": {"val_fraction": 0.2, "test_fraction": 0.0},
        "groups": {"head": 1, "tail": None},
        "max_epochs": 20,
    }
    dm = build_datamodule(old)
    assert dm.columns.path_column == "file" and dm.reader_options["group_column"] == "pid"
    assert (dm.eval_batch_size, dm.bad_images.policy, dm.bad_images.check) == (9, "skip", "none")
    assert dm.split.val_fraction == 0.2 and dm.groups.head == 1


def test_blocks_built_in_code_check_their_choices():
    with pytest.raises(ValueError, match=r"data\.bad_images\.policy='drop'; expected one of \['error', 'skip'\]"):
        BadImagesConfig(policy="drop")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"LoaderConfig: unknown field\(s\) \['pin'\]"):
        CXRDataModule(format="cxr_lt", root="/nowhere", train_csv="t.csv", loader={"pin": False})
