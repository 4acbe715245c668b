"""Evaluation from checkpoints: eval.py reproduces training's test metrics, thresholds, fusion, submissions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import TINY_OVERRIDES, compose_config
from mlgcn_lt.config import PROJECT_ROOT
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES
from mlgcn_lt.evaluation.evaluate import evaluate
from mlgcn_lt.evaluation.predict import CheckpointMismatch, fuse_by_study, load_checkpoint
from mlgcn_lt.evaluation.submit import SubmissionError, check_submission, write_submission
from mlgcn_lt.evaluation.submit import main as submit_main
from mlgcn_lt.evaluation.thresholds import tune_thresholds
from mlgcn_lt.training.train import train


@pytest.fixture(scope="module")
def trained(tiny_cxr_lt, tmp_path_factory):
    """A short real training run on the tiny dataset: (run dir, metrics)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config(
        [f"data.root={tiny_cxr_lt}", *TINY_OVERRIDES, "trainer.max_epochs=2", "callbacks.early_stopping=null"], out
    )
    metrics = train(cfg)
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    return out, metrics


@pytest.mark.slow  # uses the module's real training run (fixture `trained`)
def test_run_dir_holds_every_output(trained):
    out, metrics = trained
    for name in (
        "config.yaml",
        "metrics.json",
        "label_stats.json",
        "thresholds.json",
        "per_class_test.csv",
        "predictions_test.csv",
    ):
        assert (out / name).is_file(), name
    per_class = pd.read_csv(out / "per_class_test.csv")
    assert list(per_class.columns[:7]) == ["class", "group", "train_count", "positives", "AP", "AUC", "F1"]
    assert len(per_class) == 26 and set(per_class["group"]) == {"head", "middle", "tail"}
    assert per_class["AP"].dropna().mean() == pytest.approx(metrics["test/mAP"], abs=1e-6)
    preds = pd.read_csv(out / "predictions_test.csv")
    assert len(preds) == 16 and list(preds.columns[-26:]) == list(CXR_LT_2023_CLASSES)
    assert "dicom_id" in preds.columns and preds[list(CXR_LT_2023_CLASSES)].to_numpy().max() <= 1
    assert "test/mF1_tuned" in metrics


@pytest.mark.slow  # uses the module's real training run (fixture `trained`)
def test_eval_reproduces_training_test_metrics(trained, tiny_cxr_lt, tmp_path, hydra_cleanup):
    _out, metrics = trained
    cfg = compose_config(
        [f"data.root={tiny_cxr_lt}", *TINY_OVERRIDES, f"ckpt_path={metrics['best_checkpoint']}"],
        tmp_path / "eval",
        config_name="eval",
    )
    result = evaluate(cfg)
    for key in ("test/mAP", "test/mAUC", "test/mF1", "test/mAP_head", "test/mAP_tail", "test/mF1_tuned"):
        assert result[key] == pytest.approx(metrics[key], abs=1e-4), key
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["test/mAP"] == pytest.approx(metrics["test/mAP"], abs=1e-4)
    assert (tmp_path / "eval" / "per_class_test.csv").is_file()
    assert len(pd.read_csv(tmp_path / "eval" / "predictions_test.csv")) == 16


@pytest.mark.slow  # uses the module's real training run (fixture `trained`)
def test_eval_other_split_tta_and_fusion(trained, tiny_cxr_lt, tmp_path, hydra_cleanup):
    _, metrics = trained
    cfg = compose_config(
        [
            f"data.root={tiny_cxr_lt}",
            *TINY_OVERRIDES,
            f"ckpt_path={metrics['best_checkpoint']}",
            "split=val",
            "tta=[hflip]",
            "fusion=mean",
        ],
        tmp_path,
        config_name="eval",
    )
    result = evaluate(cfg)
    assert "val/mAP" in result and 0 <= result["val/mAP"] <= 1
    preds = pd.read_csv(tmp_path / "predictions_val.csv")
    per_study = preds.groupby("study_id")[list(CXR_LT_2023_CLASSES)].nunique()
    assert (per_study == 1).all().all()  # every image of a study carries the study's score


@pytest.mark.slow  # uses the module's real training run (fixture `trained`)
def test_checkpoint_with_other_classes_is_refused(trained):
    _, metrics = trained
    other = [*list(CXR_LT_2023_CLASSES[:-1]), "Something Else"]
    with pytest.raises(CheckpointMismatch, match=r"missing in checkpoint \['Something Else'\].*\['Tortuous Aorta'\]"):
        load_checkpoint(metrics["best_checkpoint"], other)


def test_tuned_thresholds_maximise_f1():
    probs = np.array([[0.9], [0.35], [0.3], [0.2], [0.1]])
    targets = np.array([[1.0], [1.0], [0.0], [0.0], [0.0]])
    assert tune_thresholds(probs, targets)[0] == pytest.approx(0.35)  # both positives, no negative: F1 = 1
    assert tune_thresholds(probs, np.zeros((5, 1)))[0] == 0.5


def test_study_fusion_by_hand():
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    studies = ["s1", "s1", "s2"]
    np.testing.assert_allclose(fuse_by_study(probs, studies, "mean"), [[0.4, 0.6], [0.4, 0.6], [0.5, 0.5]])
    np.testing.assert_allclose(fuse_by_study(probs, studies, "max"), [[0.6, 0.8], [0.6, 0.8], [0.5, 0.5]])
    fused = fuse_by_study(probs, studies, "view_weighted", views=["PA", "LATERAL", "AP"])
    np.testing.assert_allclose(fused[0], (np.array([0.2, 0.8]) + 0.5 * np.array([0.6, 0.4])) / 1.5)


def _unlabelled_test_csv(tiny_cxr_lt: Path, tmp_path: Path) -> Path:
    df = pd.read_csv(tiny_cxr_lt / "test.csv")
    path = tmp_path / "challenge_test.csv"
    df.iloc[::-1][list(df.columns[:6])].to_csv(path, index=False)  # reversed order, no label columns
    return path


@pytest.mark.slow  # uses the module's real training run (fixture `trained`)
def test_submission_rows_ids_and_class_order(trained, tiny_cxr_lt, tmp_path):
    _, metrics = trained
    csv = _unlabelled_test_csv(tiny_cxr_lt, tmp_path)
    ckpt = metrics["best_checkpoint"]
    one = write_submission([ckpt], csv, tiny_cxr_lt, tmp_path / "one.csv")
    source = pd.read_csv(csv)
    assert list(one.columns) == ["dicom_id", *CXR_LT_2023_CLASSES]
    assert one["dicom_id"].tolist() == source["dicom_id"].tolist()
    written = pd.read_csv(tmp_path / "one.csv")
    np.testing.assert_allclose(written[list(CXR_LT_2023_CLASSES)], one[list(CXR_LT_2023_CLASSES)], atol=1e-12)
    last = str(Path(ckpt).parent / "last.ckpt")
    both = write_submission([ckpt, last], csv, tiny_cxr_lt, tmp_path / "both.csv")
    other = write_submission([last], csv, tiny_cxr_lt, tmp_path / "other.csv")
    values = lambda f: f[list(CXR_LT_2023_CLASSES)].to_numpy()  # noqa: E731
    np.testing.assert_allclose(values(both), (values(one) + values(other)) / 2, atol=1e-6)
    flipped = write_submission([ckpt], csv, tiny_cxr_lt, tmp_path / "tta.csv", tta=["hflip"])
    assert not np.allclose(values(flipped), values(one))


@pytest.mark.slow  # uses the module's real training run (fixture `trained`)
def test_submission_checks_refuse_mismatches(trained, tiny_cxr_lt, tmp_path):
    csv = _unlabelled_test_csv(tiny_cxr_lt, tmp_path)
    source = pd.read_csv(csv, dtype=str)
    good = pd.DataFrame({"dicom_id": source["dicom_id"], **{c: 0.5 for c in CXR_LT_2023_CLASSES}})
    check_submission(good, source, ["dicom_id"])
    with pytest.raises(SubmissionError, match="rows for"):
        check_submission(good.iloc[1:], source, ["dicom_id"])
    with pytest.raises(SubmissionError, match="in order"):
        check_submission(good.iloc[::-1].reset_index(drop=True), source, ["dicom_id"])
    bad = good.copy()
    bad.loc[3, "Edema"] = 1.5
    with pytest.raises(SubmissionError, match="row 3: Edema"):
        check_submission(bad, source, ["dicom_id"])
    with pytest.raises(SubmissionError, match="official order"):
        check_submission(good[["dicom_id", *reversed(CXR_LT_2023_CLASSES)]], source, ["dicom_id"])


@pytest.mark.slow  # uses the module's real training run (fixture `trained`)
def test_submit_cli_and_eval_cli(trained, tiny_cxr_lt, tmp_path):
    _, metrics = trained
    csv = _unlabelled_test_csv(tiny_cxr_lt, tmp_path)
    code = submit_main(
        [
            "--ckpt",
            metrics["best_checkpoint"],
            "--csv",
            str(csv),
            "--root",
            str(tiny_cxr_lt),
            "--out",
            str(tmp_path / "sub.csv"),
        ]
    )
    assert code == 0 and len(pd.read_csv(tmp_path / "sub.csv")) == 16
    assert (
        submit_main(
            [
                "--ckpt",
                str(tmp_path / "nope.ckpt"),
                "--csv",
                str(csv),
                "--root",
                str(tiny_cxr_lt),
                "--out",
                str(tmp_path / "x.csv"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x.csv").exists()
    proc = subprocess.run(
        [
            sys.executable,
            "eval.py",
            f"ckpt_path={metrics['best_checkpoint']}",
            f"data.root={tiny_cxr_lt}",
            *TINY_OVERRIDES,
            f"hydra.run.dir={tmp_path}/evalrun",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((tmp_path / "evalrun" / "metrics.json").read_text())
    assert saved["test/mAP"] == pytest.approx(metrics["test/mAP"], abs=1e-4)
