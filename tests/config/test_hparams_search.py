"""hparams_search=optuna: the config composes (local / SLURM launchers), a 2-trial search runs and resumes, and the
report ranks the trials with the best parameters as an override line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from helpers import TINY_OVERRIDES
from mlgcn_lt.config import CONF_DIR, PROJECT_ROOT
from mlgcn_lt.reporting.search import override_line, search_report
from mlgcn_lt.reporting.table import main as report_main

SEARCH = ["hparams_search=optuna", "+experiment=ablation_lse_mha"]


@pytest.mark.parametrize("launcher", ["local", "slurm", None])
def test_optuna_search_config_composes(launcher, tmp_path, monkeypatch, hydra_cleanup):
    monkeypatch.setenv("MLGCN_LOG_DIR", str(tmp_path))
    extra = [f"hydra/launcher={launcher}"] if launcher else []
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[*SEARCH, *extra], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_.endswith("TPESampler")
    assert str(sweeper.direction) in ("maximize", "Direction.maximize") and cfg.optimized_metric == "val/mAP"
    assert set(sweeper.params) == {
        "model.optimizer.lr",
        "model.loss.weight",
        "model.pooling.gamma",
        "model.head.threshold",
        "data/sampler",
    }
    # the keys searched exist in the composed model (a typo would only fail in the first trial)
    assert cfg.model.loss.weight is not None and cfg.model.pooling.gamma > 0 and cfg.model.head.threshold > 0
    sweep_dir = tmp_path / "search" / "mlgcn_search"
    assert Path(cfg.hydra.sweep.dir) == sweep_dir
    assert sweeper.storage == f"sqlite:///{sweep_dir / 'optuna.db'}" and sweep_dir.is_dir()


def _search(tiny: Path, sweep: Path, trials: int) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "train.py",
        *SEARCH,
        f"data.root={tiny}",
        *TINY_OVERRIDES,
        "trainer.fast_dev_run=true",
        "model/label_embedding=random",
        "model.num_experts=2",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweep.dir={sweep}",
    ]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_trial_search_runs_resumes_and_reports(tiny_cxr_lt, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    proc = _search(tiny_cxr_lt, sweep, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    first = optuna.load_study(study_name="mlgcn_search", storage=storage).trials
    assert [t.state.name for t in first] == ["COMPLETE", "COMPLETE"]
    proc = _search(tiny_cxr_lt, sweep, 1)  # the same command again: the study is loaded and extended
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = optuna.load_study(study_name="mlgcn_search", storage=storage).trials
    assert len(trials) == 3 and [t.params for t in trials[:2]] == [t.params for t in first]
    runs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(runs) == 3  # a re-run's job 0 gets its own run directory, it does not resume trial 0's
    assert report_main([str(sweep), "--split", "val", "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert "## Search `mlgcn_search`" in out and override_line(best.params) in out


def test_search_report_ranks_trials_and_prints_best_overrides(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    for value in (0.2, 0.5, 0.1):
        trial = study.ask()
        trial.suggest_float("model.optimizer.lr", 1e-5, 1e-3, log=True)
        trial.suggest_categorical("data/sampler", ["random", "cycle"])
        study.tell(trial, value)
    # the parameters come from the sampler: read them back rather than assuming them
    best = max(study.trials, key=lambda t: t.value)
    text = search_report([tmp_path])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "COMPLETE" in line]
    values = [float(r.split("|")[3]) for r in rows]
    assert values == sorted(values, reverse=True) and len(rows) == 3
    assert f"data/sampler={best.params['data/sampler']}" in text
    assert override_line({"model.optimizer.lr": 0.000123456789, "data/sampler": "cycle"}) == (
        "data/sampler=cycle model.optimizer.lr=0.000123457"
    )
    assert search_report([tmp_path / "nothing"]) == ""
