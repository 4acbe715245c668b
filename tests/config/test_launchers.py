"""Sweeps: submitit's local launcher (the SLURM path without a cluster), failed jobs, DDP in a local multirun."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import TINY_OVERRIDES
from mlgcn_lt.config import PROJECT_ROOT
from mlgcn_lt.reporting.table import collect_runs, summarize

pytestmark = pytest.mark.slow


def _multirun(tiny, sweep, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        f"data.root={tiny}",
        *TINY_OVERRIDES,
        "trainer.max_epochs=1",
        "model/label_embedding=random",
        f"hydra.sweep.dir={sweep}",
        *extra,
    ]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)


def test_two_jobs_through_submitit_local_launcher(tiny_cxr_lt, tmp_path):
    proc = _multirun(tiny_cxr_lt, tmp_path / "sweep", "hydra/launcher=local", "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    seeds = []
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert 0 <= metrics["test/mAP"] <= 1
        seeds.append(
            int(
                json.loads(
                    json.dumps(__import__("yaml").safe_load((tmp_path / "sweep" / job / "config.yaml").read_text()))
                )["seed"]
            )
        )
    assert seeds == [0, 1]
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # the jobs really went through submitit


def test_a_failed_job_does_not_stop_the_others_and_shows_in_the_report(tiny_cxr_lt, tmp_path):
    proc = _multirun(tiny_cxr_lt, tmp_path / "sweep", "data.batch_size=0,4")
    assert proc.returncode != 0  # the sweep reports the failure at the end...
    assert not (tmp_path / "sweep" / "0" / "metrics.json").exists()
    assert (tmp_path / "sweep" / "1" / "metrics.json").is_file()  # ...after running the other job
    runs = collect_runs([str(tmp_path / "sweep")])
    assert len(runs) == 2 and sum(r.metrics is None for r in runs) == 1
    table = summarize(runs)
    assert len(table) == 1


def test_ddp_inside_a_local_multirun_is_refused_with_advice(tiny_cxr_lt, tmp_path):
    proc = _multirun(tiny_cxr_lt, tmp_path / "sweep", "trainer=ddp_sim", "seed=0,1")
    assert proc.returncode != 0
    assert "DDP inside a local multirun" in proc.stdout + proc.stderr
    assert "hydra/launcher=slurm" in proc.stdout + proc.stderr
