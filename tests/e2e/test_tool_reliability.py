"""Tools facing bad inputs and faults: unusable checkpoints, torn checkpoint writes, submission outputs and sizes,
zero-step runs, crashed runs' logs, thresholds files, report outputs (issue 13, items 5-10)."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from helpers import TINY_OVERRIDES, compose_config
from mlgcn_lt.config import PROJECT_ROOT
from mlgcn_lt.evaluation import submit
from mlgcn_lt.training.guards import check_config
from mlgcn_lt.training.rundirs import AtomicCheckpointIO
from mlgcn_lt.utils.checkpoints import CheckpointError, read_checkpoint


# ---------------------------------------------------------------------------------------------------- item 8
@pytest.fixture
def bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not usable checkpoints: name -> (path, what the error must say)."""
    out: dict[str, tuple[Path, str]] = {}

    def add(name: str, expected: str) -> Path:
        path = tmp_path / f"{name}.ckpt"
        out[name] = (path, expected)
        return path

    add("random", "not a PyTorch checkpoint").write_bytes(os.urandom(4096))
    add("text", "not a PyTorch checkpoint \\(a text file").write_text("epoch=3 val_mAP=0.31\n")
    add("empty", "is empty").write_bytes(b"")
    torch.save({"fc.weight": torch.zeros(3, 2), "fc.bias": torch.zeros(3)}, add("state_dict", "plain state dict"))
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 2)}, "epoch": 9}, add("authors", "no Lightning"))
    lightning = {"state_dict": {"w": torch.zeros(50_000)}, "pytorch-lightning_version": "2.6", "hyper_parameters": {}}
    torch.save(lightning, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    add("truncated", "truncated").write_bytes(data[: len(data) // 2])
    torch.save([1, 2, 3], add("list", "holds a list"))
    return out


def test_unusable_checkpoints_are_named_with_what_they_are(bad_checkpoints):
    for name, (path, expected) in bad_checkpoints.items():
        with pytest.raises(CheckpointError, match=expected) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert str(path) in message, name
        assert "weights_only" not in message, name  # never the advice to disable safe loading
    for name in ("state_dict", "authors"):
        with pytest.raises(CheckpointError, match="python -m mlgcn_lt.import_release"):
            read_checkpoint(bad_checkpoints[name][0])
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(bad_checkpoints["random"][0].parent)


def test_every_tool_reports_the_bad_checkpoint_by_name(bad_checkpoints, tmp_path, hydra_cleanup):
    from mlgcn_lt.evaluation.evaluate import evaluate
    from mlgcn_lt.evaluation.predict import load_checkpoint
    from mlgcn_lt.reporting.runs import Run
    from mlgcn_lt.training.decoupled import read_stage1

    for path, expected in bad_checkpoints.values():
        with pytest.raises(CheckpointError, match=expected):
            load_checkpoint(path)  # eval.py, submit, report's figures
        with pytest.raises(CheckpointError, match=f"model.decoupled.init_from {path}.*{expected}"):
            read_stage1(path, classes=["a"], num_experts=1, backbone="resnet18")  # cRT stage 2
    path, expected = bad_checkpoints["truncated"]
    cfg = compose_config([f"ckpt_path={path}", "data.root=/nonexistent"], tmp_path / "eval", config_name="eval")
    with pytest.raises(CheckpointError, match=f"ckpt_path {path} is truncated"):
        evaluate(cfg)  # named before any data is read (data.root does not exist)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(path.read_bytes())
    assert Run.load(run).label_stats is None  # report: no statistics from a truncated checkpoint, no traceback


def test_submit_names_which_of_several_checkpoints_is_bad(bad_checkpoints, tiny_cxr_lt, tmp_path, capsys):
    bad, _ = bad_checkpoints["text"]
    csv = tiny_cxr_lt / "test.csv"
    args = ["--csv", str(csv), "--root", str(tiny_cxr_lt), "--out", str(tmp_path / "sub.csv")]
    code = submit.main(["--ckpt", str(bad), "--ckpt", str(bad_checkpoints["random"][0]), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--ckpt #1 of 2: checkpoint {bad} is not a PyTorch checkpoint" in err
    assert not (tmp_path / "sub.csv").exists()


# ---------------------------------------------------------------------------------------------------- item 9
def _fail_partway(monkeypatch, code: int, after: int) -> list[int]:
    """Make atomic_write's file raise ``OSError(code)`` once ``after`` bytes were written; returns bytes written."""
    from mlgcn_lt.utils import io

    written = [0]
    real_fdopen = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if written[0] + len(data) > after:
                raise OSError(code, os.strerror(code))
            written[0] += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(io.os, "fdopen", lambda *a, **k: Failing(real_fdopen(*a, **k)))
    return written


@pytest.mark.parametrize(
    ("code", "reason"), [(errno.ENOSPC, "disk full"), (errno.EFBIG, "file-size limit reached")], ids=["enospc", "efbig"]
)
def test_checkpoint_write_failing_midway_keeps_the_previous_one(tmp_path, monkeypatch, code, reason):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    written = _fail_partway(monkeypatch, code, after=4096)
    with pytest.raises(OSError, match=f"{reason} while writing checkpoint .*previous checkpoint is intact") as info:
        io.save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)
    assert info.value.errno == code
    assert 0 < written[0] <= 4096  # the failure came partway through the file, not after a complete save
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_file_size_limit_while_checkpointing_in_a_real_process(tmp_path):
    """RLIMIT_FSIZE: the kernel refuses the write partway (EFBIG); torch wraps it as 'unexpected pos'."""
    code = f"""
import resource, torch
from mlgcn_lt.training.rundirs import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({{"step": 1}}, {str(tmp_path / "last.ckpt")!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    io.save_checkpoint({{"step": 2, "w": torch.zeros(1 << 20)}}, {str(tmp_path / "last.ckpt")!r})
except OSError as e:
    print("ERROR", type(e.__cause__).__name__, e)
"""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"ERROR RuntimeError [Errno {errno.EFBIG}] file-size limit reached while writing checkpoint" in proc.stdout
    assert "previous checkpoint is intact" in proc.stdout
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---------------------------------------------------------------------------------------------------- item 6, messages
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


# ---------------------------------------------------------------------------------------------------- item 7
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


# ---------------------------------------------------------------------------------------------------- item 5
@pytest.mark.parametrize("override", ["trainer.max_epochs=0", "trainer.max_steps=0", "trainer.limit_train_batches=0"])
def test_zero_training_steps_refused_at_compose_time(tiny_cfg, override):
    from mlgcn_lt.training.train import plain_config

    with pytest.raises(ValueError, match=f"{override}: no training step would run"):
        check_config(plain_config(tiny_cfg(override)))


def test_report_marks_a_run_that_trained_zero_steps(tmp_path, capsys):
    from mlgcn_lt.reporting.table import main

    for name, steps in (("trained", 40), ("untrained", 0)):
        run = tmp_path / "sweep" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"experiment_name": "x", "seed": 0}))
        (run / "metrics.json").write_text(json.dumps({"test/mAP": 0.5, "trained_steps": steps, "wall_time_s": 1}))
    assert main([str(tmp_path / "sweep"), "--metrics", "mAP"]) == 0
    text = capsys.readouterr().out
    assert "| x | 1 (+1 failed) | 0.500 |" in text
    assert "untrained` (x, seed 0): metrics.json says it trained 0 optimizer steps" in text


@pytest.mark.slow
def test_metrics_json_records_the_optimizer_steps(stage1_checkpoint):
    metrics = json.loads((stage1_checkpoint.parent.parent / "metrics.json").read_text())
    assert metrics["trained_steps"] == 2  # one epoch of two batches


# ---------------------------------------------------------------------------------------------------- item 10
def test_a_failed_run_logs_its_traceback_to_the_run_log(tiny_cfg, tmp_path):
    from mlgcn_lt.training.train import train

    log_file = tmp_path / "train.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(Exception, match="gone") as info:
            train(tiny_cfg(f"data.root={tmp_path / 'gone'}"))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    text = log_file.read_text()
    assert "run failed" in text and "Traceback (most recent call last)" in text
    assert str(info.value).splitlines()[0] in text


def test_train_py_setup_failure_is_in_the_hydra_run_log(tmp_path):
    log_dir = tmp_path / "logs"
    cmd = [sys.executable, "train.py", *TINY_OVERRIDES, f"data.root={tmp_path / 'gone'}", f"paths.log_dir={log_dir}"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    (log,) = (log_dir / "train" / "runs").glob("*/train.log")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and str(tmp_path / "gone") in text


# ---------------------------------------------------------------------------------------------------- messages
def test_thresholds_file_not_json_is_named(tmp_path):
    from mlgcn_lt.evaluation.thresholds import load_thresholds

    bad = tmp_path / "thresholds.json"
    bad.write_text("classes: [a]\n")
    with pytest.raises(ValueError, match=f"thresholds file {bad} is not JSON"):
        load_thresholds(bad, ["a"])
    bad.write_text("[0.5]")
    with pytest.raises(ValueError, match="expected a JSON object with 'classes' and 'thresholds'"):
        load_thresholds(bad, ["a"])


def test_report_out_must_be_a_directory(tmp_path, capsys):
    from mlgcn_lt.reporting.table import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    target = tmp_path / "report.md"
    target.write_text("keep")
    assert main([str(run), "--out", str(target)]) == 2
    assert f"--out {target} must be a directory" in capsys.readouterr().err and target.read_text() == "keep"


def test_composing_a_config_creates_no_run_directory(tmp_path, monkeypatch, hydra_cleanup):
    """Resolving hydra.run.dir creates a run directory; plain_config must not (43 stray dirs in outputs/)."""
    from mlgcn_lt.training.train import plain_config

    monkeypatch.setenv("MLGCN_LOG_DIR", str(tmp_path / "logs"))
    cfg = compose_config(["data.root=/x", *TINY_OVERRIDES], tmp_path / "run")
    assert plain_config(cfg).paths.output_dir == str(tmp_path / "run")
    assert not (tmp_path / "logs").exists()
