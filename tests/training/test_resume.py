"""Kill and resume: SIGKILL mid-epoch then the same command resumes in the same run directory and finishes with
the metrics of an uninterrupted run; SIGTERM saves a checkpoint and exits cleanly; run directories never shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlgcn_lt.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _command(root: Path, log_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        f"data.root={root}",
        "data.synthetic=null",
        "data.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.sampler.num_samples=120",
        "trainer=cpu",
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        "callbacks.early_stopping=null",
        f"paths.log_dir={log_dir}",
        "model/label_embedding=random",
        *extra,
    ]


def _runs(log_dir: Path) -> list[Path]:
    base = log_dir / "train" / "runs"
    return sorted(base.iterdir()) if base.is_dir() else []


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 900.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before the condition: {proc.returncode}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


COMPARED = ("val/mAP", "val/mAUC", "val/mAP_tail", "test/mAP", "test/mAUC", "test/mF1", "test/mAP_head", "best_epoch")


def test_sigkill_mid_epoch_then_same_command_resumes_to_identical_metrics(tiny_cxr_lt, tmp_path):
    reference = tmp_path / "reference"
    _run(_command(tiny_cxr_lt, reference))
    expected = json.loads((_runs(reference)[0] / "metrics.json").read_text())

    killed = tmp_path / "killed"
    cmd = _command(tiny_cxr_lt, killed)
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # last.ckpt, not epoch_000.ckpt: on a loaded machine the second file of the epoch can take more than a second
    run = _kill_when(proc, killed, "last.ckpt", signal.SIGKILL, 1.0)  # into the second epoch

    resumed = _run(cmd)
    assert _runs(killed) == [run], "the same command must resume in the same run directory"
    assert "resuming from" in resumed.stderr + resumed.stdout
    got = json.loads((run / "metrics.json").read_text())
    for key in COMPARED:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 * 30


def _sampler_command(root: Path, log_dir: Path, sampler: str, *extra: str) -> list[str]:
    """The defaults of a paper row: loader workers, early stopping, ``deterministic=false``; a label-aware sampler."""
    cmd = [a for a in _command(root, log_dir) if not a.startswith(("data.num_workers", "trainer.deterministic"))]
    cmd = [a for a in cmd if a != "callbacks.early_stopping=null"]
    return [*cmd, f"data/sampler={sampler}", "data.sampler.num_samples=40", "data.num_workers=2", *extra]


def _kill_when(proc: subprocess.Popen, log_dir: Path, name: str, sig: int, delay: float) -> Path:
    _wait_for(lambda: any((r / "checkpoints" / name).exists() for r in _runs(log_dir)), proc)
    time.sleep(delay)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, sig)
    proc.wait(timeout=120)
    (run,) = _runs(log_dir)
    assert not (run / "metrics.json").exists()
    return run


@pytest.mark.parametrize("sampler", ["random", "cycle", "class_aware", "least_sampled", "repeat_factor"])
def test_sigkill_then_resume_is_exact_for_every_sampler_with_loader_workers(tiny_cxr_lt, tmp_path, sampler):
    """Issue 13, 0b: with workers, the first resumed epoch replayed epoch 0's draw (the loader prefetched before
    Lightning set the epoch), and the RNG states were restored one epoch late."""
    reference = tmp_path / "reference"
    _run(_sampler_command(tiny_cxr_lt, reference, sampler))
    expected = json.loads((_runs(reference)[0] / "metrics.json").read_text())

    killed = tmp_path / "killed"
    cmd = _sampler_command(tiny_cxr_lt, killed, sampler)
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = _kill_when(proc, killed, "last.ckpt", signal.SIGKILL, 0.5)  # into the second epoch
    resumed = _run(cmd)
    assert "resuming from" in resumed.stderr + resumed.stdout
    got = json.loads((run / "metrics.json").read_text())
    for key in COMPARED:
        assert got[key] == expected[key], (key, got[key], expected[key])  # bit-identical


def test_sigterm_mid_epoch_then_resume_is_exact(tiny_cxr_lt, tmp_path):
    """A checkpoint written mid-epoch (preemption) resumes at the next batch of the same epoch's draw."""
    extra = ("data.sampler.num_samples=400",)  # 100 steps per epoch: the signal lands mid-epoch
    reference = tmp_path / "reference"
    _run(_sampler_command(tiny_cxr_lt, reference, "cycle", *extra))
    expected = json.loads((_runs(reference)[0] / "metrics.json").read_text())

    log_dir = tmp_path / "term"
    cmd = _sampler_command(tiny_cxr_lt, log_dir, "cycle", *extra)
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = _kill_when(proc, log_dir, "last.ckpt", signal.SIGTERM, 3.0)
    assert proc.returncode == 0
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 100 < step < 200, step  # saved mid-epoch
    _run(cmd)
    got = json.loads((run / "metrics.json").read_text())
    for key in COMPARED:
        assert got[key] == expected[key], (key, got[key], expected[key])


def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resumes(tiny_cxr_lt, tmp_path):
    log_dir = tmp_path / "term"
    cmd = _command(tiny_cxr_lt, log_dir, "data.sampler.num_samples=400")  # 100 steps per epoch
    with open(tmp_path / "output.txt", "w") as stderr:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=stderr, stderr=subprocess.STDOUT)
        _wait_for(lambda: any((r / "checkpoints" / "last.ckpt").exists() for r in _runs(log_dir)), proc)
        time.sleep(3.0)  # well into the second epoch
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    err = (tmp_path / "output.txt").read_text()
    assert proc.returncode == 0, err[-3000:]
    (run,) = _runs(log_dir)
    assert not (run / "metrics.json").exists()
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 100 < step < 200 and "SIGTERM: saved" in err, err[-2000:]  # saved mid-epoch, where the signal arrived
    _run(cmd)
    assert _runs(log_dir) == [run]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test/mAP"] <= 1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 300


def test_finished_or_running_runs_are_never_reused(tiny_cxr_lt, tmp_path):
    log_dir = tmp_path / "twice"
    cmd = _command(tiny_cxr_lt, log_dir, "trainer.max_epochs=1")
    first = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
    _run(cmd)  # a finished run is not resumed: a third directory
    runs = _runs(log_dir)
    assert len(runs) == 3 and all((r / "metrics.json").is_file() for r in runs)
