"""Shared fixtures: tiny real-format datasets written to tmp dirs, and composition of the real Hydra configs.

Helpers that tests import live in ``helpers.py``; this file holds fixtures and the test-session environment."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from helpers import (
    REPO_OUTPUTS,
    TINY_OVERRIDES,
    compose_config,
    toy_stats,
    train_stage1,
    write_cxr_lt_dir,
)
from mlgcn_lt.config import CONF_DIR, setup_config_system
from mlgcn_lt.data.stats import LabelStats

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Runs that tests start without an explicit directory (also in subprocesses, which inherit the environment) go to
# a temporary folder, never into the repository's own outputs/ (nor into a user's MLGCN_LOG_DIR).
TEST_LOG_DIR = Path(tempfile.mkdtemp(prefix="mlgcn-test-logs-"))
os.environ["MLGCN_LOG_DIR"] = str(TEST_LOG_DIR)
setup_config_system(CONF_DIR)


def _run_dirs(top: Path) -> set[Path]:
    return (
        {p.parent for p in top.rglob("run_key.txt")} | {p.parent for p in top.rglob(".hydra")}
        if top.is_dir()
        else set()
    )


@pytest.fixture(scope="session", autouse=True)
def no_runs_in_repository_outputs() -> Iterator[None]:
    """Fail the session if any test left a run directory in the repository's own ``outputs/``."""
    before = _run_dirs(REPO_OUTPUTS)
    yield
    stray = sorted(_run_dirs(REPO_OUTPUTS) - before)
    shutil.rmtree(TEST_LOG_DIR, ignore_errors=True)
    assert not stray, f"tests wrote {len(stray)} run directories into {REPO_OUTPUTS}: {[str(p) for p in stray[:5]]}"


@pytest.fixture(scope="session")
def tiny_cxr_lt(tmp_path_factory) -> Path:
    """A tiny CXR-LT-format dataset shared by the tests that only read it."""
    return write_cxr_lt_dir(tmp_path_factory.mktemp("tiny_cxr_lt"))


@pytest.fixture(scope="module")
def stats(request: pytest.FixtureRequest) -> LabelStats:
    """Toy training-label statistics (:func:`helpers.toy_stats`) with the test module's ``C`` classes (default 6)."""
    return toy_stats(getattr(request.module, "C", 6))


@pytest.fixture
def hydra_cleanup() -> Iterator[None]:
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def tiny_cfg(tiny_cxr_lt: Path, tmp_path: Path, hydra_cleanup):
    """Factory: compose with the tiny dataset plus ``extra`` overrides."""

    def make(*extra: str) -> DictConfig:
        return compose_config([f"data.root={tiny_cxr_lt}", *TINY_OVERRIDES, *extra], tmp_path / "run")

    return make


@pytest.fixture(scope="session")
def stage1_checkpoint(tiny_cxr_lt: Path, tmp_path_factory) -> Path:
    """A stage-1 checkpoint for decoupled training (cRT): resnet18, 2 experts, one short epoch of SGD."""
    out = tmp_path_factory.mktemp("stage1")
    return train_stage1(tiny_cxr_lt, out, "model.num_experts=2", "model/optimizer=sgd", "model.optimizer.momentum=0")


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
