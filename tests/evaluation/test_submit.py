"""Submissions (mlgcn_lt/evaluation/submit.py): the checks made before any checkpoint is loaded or image predicted,
which ``--ckpt`` of several is bad, and ``--image-size``."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from mlgcn_lt.evaluation import submit


def test_submit_names_which_of_several_checkpoints_is_bad(bad_checkpoints, tiny_cxr_lt, tmp_path, capsys):
    bad, _ = bad_checkpoints["text"]
    csv = tiny_cxr_lt / "test.csv"
    args = ["--csv", str(csv), "--root", str(tiny_cxr_lt), "--out", str(tmp_path / "sub.csv")]
    code = submit.main(["--ckpt", str(bad), "--ckpt", str(bad_checkpoints["random"][0]), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--ckpt #1 of 2: checkpoint {bad} is not a PyTorch checkpoint" in err
    assert not (tmp_path / "sub.csv").exists()


@pytest.fixture
def no_inference(monkeypatch):
    """Fail the test if a submission gets as far as loading a model or predicting."""

    def forbidden(*a, **k):
        raise AssertionError("checks must come before any checkpoint is loaded or any image predicted")

    monkeypatch.setattr(submit, "load_checkpoint", forbidden)
    monkeypatch.setattr(submit, "predict_table", forbidden)


def test_submission_output_may_not_overwrite_inputs_or_be_a_directory(tiny_cxr_lt, tmp_path, no_inference):
    csv = tmp_path / "test.csv"
    csv.write_bytes((tiny_cxr_lt / "test.csv").read_bytes())
    before = csv.read_bytes()
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    run = lambda out: submit.write_submission([ckpt], csv, tiny_cxr_lt, out)  # noqa: E731
    with pytest.raises(submit.SubmissionError, match="is the input file"):
        run(csv)
    with pytest.raises(submit.SubmissionError, match="is the input file"):
        run(tmp_path / "sub" / ".." / "test.csv")  # the same file by another path
    with pytest.raises(submit.SubmissionError, match="is the input file"):
        run(ckpt)
    with pytest.raises(submit.SubmissionError, match="is a directory"):
        run(tmp_path)
    with pytest.raises(submit.SubmissionError, match=f"{csv} is a file, not a directory"):
        run(csv / "submission.csv")
    assert csv.read_bytes() == before and ckpt.read_bytes() == b"weights"


def test_submission_missing_images_and_unknown_id_column_before_inference(tiny_cxr_lt, tmp_path, no_inference):
    df = pd.read_csv(tiny_cxr_lt / "test.csv")
    df.loc[[2, 5], "path"] = ["files/gone/a.jpg", "files/gone/b.jpg"]
    csv = tmp_path / "test.csv"
    df.to_csv(csv, index=False)
    with pytest.raises(FileNotFoundError, match="2 of 16 images not found") as info:
        submit.write_submission([tmp_path / "m.ckpt"], csv, tiny_cxr_lt, tmp_path / "sub.csv")
    assert "line 4: " in str(info.value) and "gone/a.jpg" in str(info.value)
    assert "line 7: " in str(info.value) and "gone/b.jpg" in str(info.value)
    with pytest.raises(FileNotFoundError, match="--root .*gone is not a directory"):
        submit.write_submission([tmp_path / "m.ckpt"], csv, tmp_path / "gone", tmp_path / "sub.csv")
    good = tiny_cxr_lt / "test.csv"
    with pytest.raises(
        submit.SubmissionError, match=r"--id-column \['image_id'\] not found; the columns are .*dicom_id"
    ):
        submit.write_submission([tmp_path / "m.ckpt"], good, tiny_cxr_lt, tmp_path / "s.csv", id_columns=["image_id"])


@pytest.mark.slow
def test_image_size_option_overrides_the_trained_size(stage1_checkpoint, tiny_cxr_lt, tmp_path, caplog):
    csv = tiny_cxr_lt / "test.csv"
    with caplog.at_level(logging.WARNING, logger="mlgcn_lt.submit"):
        frame = submit.write_submission([stage1_checkpoint], csv, tiny_cxr_lt, tmp_path / "s.csv", image_size=64)
    assert len(frame) == 16 and (tmp_path / "s.csv").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--image-size 64" in warnings[0] and "32" in warnings[0]
    with pytest.raises(submit.SubmissionError, match="multiple of 32"):
        submit.write_submission([stage1_checkpoint], csv, tiny_cxr_lt, tmp_path / "t.csv", image_size=50)
