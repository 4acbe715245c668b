"""Cross-split leakage (images, patients) and a missing data.root, checked once at setup."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from helpers import NIH_SAMPLE, make_datamodule, write_cxr_lt_dir
from mlgcn_lt.data.datamodule import build_datamodule
from mlgcn_lt.data.leakage import LeakageError, check_split_leakage
from mlgcn_lt.data.preprocess import compose_data
from mlgcn_lt.data.tables import read_cxr_lt
from mlgcn_lt.data.validate import BadImagesError
from mlgcn_lt.data.validate import main as validate_main


@pytest.fixture
def root(tmp_path) -> Path:
    return write_cxr_lt_dir(tmp_path / "ds", {"train": 12, "development": 6, "test": 6})


def test_an_image_in_train_and_an_eval_split_is_an_error_naming_it(root):
    train = pd.read_csv(root / "train.csv")
    test = pd.read_csv(root / "test.csv")
    pd.concat([test, train.iloc[[3, 7]]]).to_csv(root / "test.csv", index=False)
    with pytest.raises(LeakageError) as e:
        make_datamodule(root).setup()
    msg = str(e.value)
    assert "2 image(s) are in both train (train.csv) and test (test.csv)" in msg
    assert train["path"][3] in msg and train["path"][7] in msg and "test.csv:8" in msg


def test_a_patient_in_train_and_a_given_file_is_a_warning_with_counts(root, caplog):
    train = pd.read_csv(root / "train.csv")
    dev = pd.read_csv(root / "development.csv")
    dev.loc[0, "subject_id"] = train["subject_id"][0]  # another image of a training patient
    dev.to_csv(root / "development.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="mlgcn_lt.data.leakage"):
        make_datamodule(root).setup()
    assert "1 patient(s) (column 'subject_id') have images in both train (train.csv) and val (development.csv)" in (
        caplog.text
    )
    assert "2 of train's 12 images and 1 of val's 6 images" in caplog.text


def test_a_patient_in_two_carved_splits_is_an_error(root):
    """Carving never splits a patient: if two parts of one table share one, something is broken; refuse."""
    table = read_cxr_lt(root / "train.csv", root)  # rows 0-1 are patient 10000000, rows 2-3 patient 10000001
    with pytest.raises(LeakageError, match=r"internal error: splits carved out of .*train\.csv.*1 patient\(s\)"):
        check_split_leakage({"train": table.subset([0, 2, 3]), "val": table.subset([1, 4])})


def test_carved_splits_and_disjoint_given_files_pass(root, caplog):
    with caplog.at_level(logging.WARNING, logger="mlgcn_lt.data.leakage"):
        make_datamodule(root, val_csv=None, test_csv=None).setup()
        make_datamodule(root).setup()
    assert "patient" not in caplog.text


@pytest.mark.skipif(not NIH_SAMPLE.is_dir(), reason="../shared/data/nih_cxr14_sample is absent (a user's clone)")
def test_real_nih_sample_has_no_leakage(caplog):
    with caplog.at_level(logging.WARNING, logger="mlgcn_lt.data.leakage"):
        dm = build_datamodule(compose_data(["data=nih_cxr14_sample", "data.bad_images.check=none"]))
        dm.setup()
    assert not caplog.text and sum(len(t) for t in dm.tables.values()) > 1000


def test_missing_data_root_is_one_error_naming_it(root, tmp_path):
    gone = tmp_path / "not_mounted"
    csvs = {s: str(root / f"{f}.csv") for s, f in [("train", "train"), ("val", "development"), ("test", "test")]}
    dm = make_datamodule(gone, train_csv=csvs["train"], val_csv=csvs["val"], test_csv=csvs["test"])
    with pytest.raises(BadImagesError) as e:
        dm.setup()
    msg = str(e.value)
    assert f"data.root {gone} does not exist" in msg and "12 training images" in msg
    assert "files/p10" not in msg  # not one line per image


def test_validate_writes_its_list_under_the_log_dir_not_the_current_directory(
    root, tmp_path, monkeypatch, hydra_cleanup
):
    monkeypatch.setenv("MLGCN_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.chdir(tmp_path)
    assert validate_main([f"data.root={root}", "data.synthetic=null", "--workers", "1"]) == 0
    assert not (tmp_path / "bad_images.csv").exists()
    (written,) = (tmp_path / "logs" / "validate").glob("*/bad_images.csv")
    assert written.read_text().startswith("source,line,path,reason")
    (tmp_path / "out").mkdir()
    assert validate_main([f"data.root={root}", "data.synthetic=null", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "bad_images.csv").is_file()
