"""The CXR-LT protocol (docs/protocol.md): val carved from train by subject chooses checkpoints; dev and test are
report-only splits scored with the chosen checkpoint; a report split without labels gets predictions and a
submission, no metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from helpers import TINY_OVERRIDES, compose_config, make_datamodule, toy_stats, write_cxr_lt_dir, write_run
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES
from mlgcn_lt.data.tables import TableError, read_table

SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.num_sanity_val_steps=0",
    "callbacks.early_stopping=null",
]


@pytest.mark.parametrize("data", ["cxr_lt", "synthetic"])
def test_cxr_lt_configs_carve_val_and_name_dev_and_test_as_report_splits(data, tmp_path, hydra_cleanup):
    cfg = compose_config([f"data={data}"], tmp_path / "run")
    assert cfg.data.val_csv is None
    assert Path(cfg.data.dev_csv).name == "development.csv"
    assert Path(cfg.data.test_csv).name == "test.csv"
    assert cfg.data.split.val_fraction > 0 and cfg.data.split.test_fraction == 0


def test_other_data_configs_keep_a_carved_test_split(tmp_path, hydra_cleanup):
    cfg = compose_config(["data=nih_cxr14"], tmp_path / "run")
    assert cfg.data.val_csv is None and cfg.data.test_csv is None and cfg.data.dev_csv is None
    assert cfg.data.split.test_fraction > 0


def test_val_is_carved_from_train_by_subject_and_dev_test_are_read_as_given(tiny_cxr_lt):
    dm = make_datamodule(tiny_cxr_lt, val_csv=None, dev_csv="development.csv", split={"val_fraction": 0.25})
    dm.setup("fit")
    assert set(dm.tables) == {"train", "val", "dev", "test"} and dm.report_splits == ["dev", "test"]
    subjects = {s: set(dm.tables[s].meta["subject_id"]) for s in dm.tables}
    assert subjects["val"] and not subjects["train"] & subjects["val"]
    assert len(dm.tables["train"]) + len(dm.tables["val"]) == 40  # all of train.csv, nothing else
    assert len(dm.tables["dev"]) == 16 and len(dm.tables["test"]) == 16
    assert dm.stats.num_images == len(dm.tables["train"])  # statistics of the training part only
    described = dm.describe_splits()
    assert "carved from train.csv by subject_id" in described["val"]
    assert "development.csv" in described["dev"] and "report only" in described["dev"]


def _drop_labels(csv: Path, out: Path) -> Path:
    df = pd.read_csv(csv)
    df[[c for c in df.columns if c not in CXR_LT_2023_CLASSES]].to_csv(out, index=False)
    return out


def test_report_split_may_lack_labels_but_train_may_not(tiny_cxr_lt, tmp_path):
    unlabelled = _drop_labels(tiny_cxr_lt / "test.csv", tmp_path / "test_nolabels.csv")
    dm = make_datamodule(tiny_cxr_lt, val_csv=None, test_csv=str(unlabelled), split={"val_fraction": 0.25})
    dm.setup("fit")
    assert not dm.has_labels("test") and dm.has_labels("val")
    assert "no labels" in dm.describe_splits()["test"]
    with pytest.raises(TableError, match=r"train_nolabels\.csv: no label columns after 'path'.*Atelectasis"):
        make_datamodule(
            tiny_cxr_lt, train_csv=str(_drop_labels(tiny_cxr_lt / "train.csv", tmp_path / "train_nolabels.csv"))
        ).setup()
    with pytest.raises(TableError, match="no label columns"):
        make_datamodule(tiny_cxr_lt, val_csv=str(unlabelled)).setup()


def test_csv_format_report_split_without_label_columns(tmp_path):
    pd.DataFrame({"file": ["a.png"], "patient": ["p1"]}).to_csv(tmp_path / "t.csv", index=False)
    opts = {"path_column": "file", "label_columns": ["Edema", "Mass"], "group_column": "patient"}
    table = read_table("csv", tmp_path / "t.csv", tmp_path, require_labels=False, **opts)
    assert not table.has_labels and table.classes == ["Edema", "Mass"] and table.labels.shape == (1, 2)
    with pytest.raises(TableError, match=r"t\.csv: missing column\(s\) \['Edema', 'Mass'\]"):
        read_table("csv", tmp_path / "t.csv", tmp_path, **opts)


def _train(root: Path, out: Path, *extra: str) -> tuple[dict, Path]:
    from mlgcn_lt.training.train import train

    cfg = compose_config([f"data.root={root}", *TINY_OVERRIDES, *SHORT, *extra], out)
    return train(cfg), out


@pytest.mark.slow
def test_training_reports_val_dev_and_test_from_their_own_splits(tiny_cxr_lt, tmp_path, hydra_cleanup):
    metrics, out = _train(tiny_cxr_lt, tmp_path / "run")
    saved = json.loads((out / "metrics.json").read_text())
    for split in ("val", "dev", "test"):
        for key in ("mAP", "mAUC", "mF1", "mAP_head", "mAP_middle", "mAP_tail", "AP/Hernia"):
            assert f"{split}/{key}" in saved, f"{split}/{key}"
    for split in ("dev", "test"):
        per_class = pd.read_csv(out / f"per_class_{split}.csv")
        assert per_class["class"].tolist() == list(CXR_LT_2023_CLASSES)
        predictions = pd.read_csv(out / f"predictions_{split}.csv")
        source = pd.read_csv(tiny_cxr_lt / ("development.csv" if split == "dev" else "test.csv"))
        assert sorted(predictions["dicom_id"]) == sorted(source["dicom_id"])  # the whole file, nothing else
    assert "carved from train.csv by subject_id" in saved["splits"]["val"]
    assert saved["dev/mAP"] != saved["test/mAP"]  # two different files scored
    assert metrics["dev/mAP"] == pytest.approx(saved["dev/mAP"])


@pytest.mark.slow
def test_unlabelled_test_split_gets_predictions_and_a_submission_only(tmp_path, hydra_cleanup, caplog):
    root = write_cxr_lt_dir(tmp_path / "data", {"train": 24, "development": 8, "test": 8})
    test = pd.read_csv(root / "test.csv")
    shuffled = [*reversed(CXR_LT_2023_CLASSES)]  # label order is irrelevant: no labels at all
    test[[c for c in test.columns if c not in shuffled]].to_csv(root / "test.csv", index=False)
    with caplog.at_level(logging.INFO, logger="mlgcn_lt.training.callbacks.report_outputs"):
        _, out = _train(root, tmp_path / "run")
    saved = json.loads((out / "metrics.json").read_text())
    assert not [k for k in saved if k.startswith("test/")]
    assert "dev/mAP" in saved and "val/mAP" in saved
    submission = pd.read_csv(out / "submission_test.csv")
    assert list(submission.columns) == ["dicom_id", *CXR_LT_2023_CLASSES]
    assert submission["dicom_id"].tolist() == test["dicom_id"].tolist()
    assert submission[list(CXR_LT_2023_CLASSES)].apply(lambda c: c.between(0, 1)).all().all()
    assert (out / "predictions_test.csv").is_file() and not (out / "per_class_test.csv").exists()
    lines = [r.getMessage() for r in caplog.records if "no label columns" in r.getMessage()]
    assert len(lines) == 1 and "submission_test.csv" in lines[0] and "no test/* metrics" in lines[0]
    from mlgcn_lt.evaluation.evaluate import evaluate

    ckpt = f"ckpt_path={saved['best_checkpoint']}"
    dev = evaluate(
        compose_config([f"data.root={root}", *TINY_OVERRIDES, ckpt, "split=dev"], tmp_path / "eval_dev", "eval")
    )
    assert 0 <= dev["dev/mAP"] <= 1
    assert "development.csv" in json.loads((tmp_path / "eval_dev" / "metrics.json").read_text())["source"]
    assert (
        evaluate(compose_config([f"data.root={root}", *TINY_OVERRIDES, ckpt, "split=test"], tmp_path / "ev", "eval"))
        == {}
    )
    assert list(pd.read_csv(tmp_path / "ev" / "submission_test.csv").columns) == ["dicom_id", *CXR_LT_2023_CLASSES]
    assert "test/mAP" not in json.loads((tmp_path / "ev" / "metrics.json").read_text())


def _protocol_run(path: Path, experiment: str, seed: int, dev: float, test: float | None) -> None:
    splits = {
        "val": "val: 6 images, carved from train.csv by subject_id (0.15, seed 0), checkpoint choice",
        "dev": "dev: 16 images, development.csv, report only",
        "test": "test: 16 images, test.csv, report only" + ("" if test is not None else ", no labels"),
    }
    metrics = {"val/mAP": 0.5, "dev/mAP": dev, "best_epoch": 1, "wall_time_s": 60, "splits": splits}
    if test is not None:
        metrics["test/mAP"] = test
    write_run(path, experiment, seed, metrics, toy_stats(6))


def test_report_names_the_split_of_each_number(tmp_path, capsys):
    from mlgcn_lt.reporting.table import main

    for seed, (dev, test) in enumerate([(0.2, 0.3), (0.4, 0.5)]):
        _protocol_run(tmp_path / "runs" / str(seed), "ablation_lse", seed, dev, test)
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--split", "dev,test", "--metrics", "mAP", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# Results (dev, test splits)")
    assert "| experiment | runs | dev/mAP | test/mAP | wall time (min) |" in text
    assert "| ablation_lse | 2 | 0.300 ± 0.141 | 0.400 ± 0.141 | 1.0 |" in text
    assert "- `dev`: report-only split, scored once with the chosen checkpoint. Source: development.csv" in text
    assert "- `val`" not in text
    csv = pd.read_csv(out / "report.csv")
    assert csv["dev/mAP_mean"].iloc[0] == pytest.approx(0.3) and csv["test/mAP_mean"].iloc[0] == pytest.approx(0.4)
    capsys.readouterr()
    assert main([str(tmp_path / "runs"), "--split", "val", "--metrics", "mAP", "--out", str(out)]) == 0
    assert "carved from train.csv by subject_id" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="2"):
        main([str(tmp_path / "runs"), "--split", "develop"])


def test_report_refuses_a_split_without_metrics_naming_why(tmp_path):
    from mlgcn_lt.reporting.table import main

    _protocol_run(tmp_path / "runs" / "0", "ablation_lse", 0, 0.2, None)  # unlabelled test: no test/* metrics
    with pytest.raises(SystemExit, match=r"no run's metrics.json has test/\* metrics .*no labels"):
        main([str(tmp_path / "runs"), "--split", "test", "--metrics", "mAP", "--out", str(tmp_path / "o")])


def test_carving_val_out_of_a_one_patient_train_file_is_refused_clearly(tmp_path):
    root = write_cxr_lt_dir(tmp_path / "d", {"train": 2, "development": 2, "test": 2})  # 2 images, 1 subject
    with pytest.raises(TableError, match=r"train\.csv: carving val out of it .* left no training images .*1 patients"):
        make_datamodule(root, val_csv=None).setup()
