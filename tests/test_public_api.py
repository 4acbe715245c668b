"""The public surface survives the package-by-job layout (issue 14): names that outside checks and users' scripts
import, every documented ``python -m mlgcn_lt.<tool>``, the console scripts of ``pyproject.toml`` and checkpoints
whose hyper-parameters name the pre-move module paths."""

from __future__ import annotations

import importlib
import runpy
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import tomllib
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import compose_config
from mlgcn_lt.config import PROJECT_ROOT
from mlgcn_lt.data.stats import LabelStats

#: (old public path, name, where it lives now)
PUBLIC = [
    ("mlgcn_lt.metrics", "compute_metrics", "mlgcn_lt.evaluation.metrics"),
    ("mlgcn_lt.metrics", "MultilabelMetrics", "mlgcn_lt.evaluation.metrics"),
    ("mlgcn_lt.models.pooling", "LSEPool", "mlgcn_lt.models.pooling"),
    ("mlgcn_lt.losses", "diversity_loss", "mlgcn_lt.losses.ride"),
    ("mlgcn_lt.losses", "RIDELoss", "mlgcn_lt.losses.ride"),
    ("mlgcn_lt.losses", "BCELoss", "mlgcn_lt.losses.classification"),
    ("mlgcn_lt.losses", "DistributionBalancedLoss", "mlgcn_lt.losses.balanced"),
    ("mlgcn_lt.models.gcn", "build_adjacency", "mlgcn_lt.models.gcn"),
    ("mlgcn_lt.data.samplers", "CycleClassSampler", "mlgcn_lt.data.samplers"),
    ("mlgcn_lt.data.samplers", "LeastSampledClassSampler", "mlgcn_lt.data.samplers"),
    ("mlgcn_lt.report", "main", "mlgcn_lt.reporting.table"),
    ("mlgcn_lt.submit", "save_submission", "mlgcn_lt.evaluation.submit"),
    ("mlgcn_lt.wandb_offline", "read_offline_run", "mlgcn_lt.training.loggers.wandb_offline"),
    ("mlgcn_lt.import_release", "import_release", "mlgcn_lt.evaluation.import_release"),
]

#: Every ``python -m`` command the documentation names.
TOOLS = [
    "mlgcn_lt.report",
    "mlgcn_lt.submit",
    "mlgcn_lt.bench",
    "mlgcn_lt.data.preprocess",
    "mlgcn_lt.data.validate",
    "mlgcn_lt.data.samplers",
    "mlgcn_lt.data.synthetic",
    "mlgcn_lt.wandb_offline",
    "mlgcn_lt.import_release",
    "mlgcn_lt.explain",
    "mlgcn_lt.reporting.dashboard",
]


@pytest.mark.parametrize(("old", "name", "new"), PUBLIC, ids=[f"{o}.{n}" for o, n, _ in PUBLIC])
def test_public_names_stay_importable_from_their_old_path(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules.*:RuntimeWarning")  # runpy, modules imported before
@pytest.mark.parametrize("module", TOOLS)
def test_every_documented_python_m_tool_answers_help(module, monkeypatch, capsys):
    """``python -m <module> --help``, run the way ``-m`` runs it (``runpy``, ``__name__ == "__main__"``)."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage:" in out and len(out.splitlines()) > 2, out


def test_a_shim_runs_as_a_real_python_m_command():
    r = subprocess.run(
        [sys.executable, "-m", "mlgcn_lt.report", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr
    assert "usage: python -m mlgcn_lt.report" in r.stdout


def _scripts() -> dict[str, str]:
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def test_every_tool_has_a_console_script():
    expected = {
        "mlgcn-train",
        "mlgcn-eval",
        "mlgcn-report",
        "mlgcn-submit",
        "mlgcn-preprocess",
        "mlgcn-validate",
        "mlgcn-bench",
        "mlgcn-samplers",
        "mlgcn-synthetic",
        "mlgcn-wandb-offline",
        "mlgcn-import-release",
        "mlgcn-explain",
        "mlgcn-wandb-dashboard",
    }
    assert expected <= set(_scripts())


@pytest.mark.parametrize("script", sorted(_scripts()))
def test_console_script_help(script, monkeypatch, capsys, tmp_path, hydra_cleanup):
    """What ``<script> --help`` runs after ``pip install -e .``: the entry point's function, from any directory."""
    module, _, func = _scripts()[script].partition(":")
    monkeypatch.chdir(tmp_path)  # the Hydra tools find conf/ from the package, not from the working directory
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as e:
        getattr(importlib.import_module(module), func)()
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage:" in out or "== Configuration groups ==" in out, out
    assert not list(tmp_path.iterdir())  # --help writes nothing


C = 5


def test_checkpoint_naming_pre_move_module_paths_still_loads(tmp_path, hydra_cleanup):
    """Checkpoints store their loss config with ``_target_``; those written before the move name
    ``mlgcn_lt.losses.<Loss>`` (one flat module then): they must rebuild the same model."""
    from mlgcn_lt.evaluation.predict import load_checkpoint

    rng = np.random.default_rng(0)
    labels = (rng.random((60, C)) < 0.3).astype(np.float32)
    labels[:C] = np.eye(C)
    stats = LabelStats.from_labels(labels, [f"c{i}" for i in range(C)])
    cfg = compose_config(
        ["model/loss=ride", "model.num_experts=2", "model/label_embedding=random", "model.label_embedding.dim=8"],
        tmp_path,
    )
    torch.manual_seed(0)
    module = instantiate(cfg.model, stats=stats.to_dict())
    ckpt = {"hyper_parameters": dict(module.hparams), "pytorch-lightning_version": L.__version__}
    module.on_save_checkpoint(ckpt)
    hparams = OmegaConf.create(ckpt["hyper_parameters"])
    ckpt["hyper_parameters"] = OmegaConf.to_container(hparams, resolve=True, enum_to_str=True)
    loss = ckpt["hyper_parameters"]["loss"]
    assert loss["_target_"] == "mlgcn_lt.losses.ride.RIDELoss"  # today's configs name the new module
    loss["_target_"] = "mlgcn_lt.losses.RIDELoss"
    loss["classification"]["_target_"] = "mlgcn_lt.losses.BCELoss"
    ckpt["state_dict"] = module.state_dict()
    path = tmp_path / "old.ckpt"
    torch.save(ckpt, path)

    restored = load_checkpoint(path, stats.classes)
    assert type(restored.loss_fn).__name__ == "RIDELoss"
    assert type(restored.loss_fn.classification).__name__ == "BCELoss"
    x = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(restored(x).logits, module.eval()(x).logits)
