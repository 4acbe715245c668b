"""OmegaConf resolvers of the configs: ``${mlgcn.project_root:}``, ``${mlgcn.workers:}``, ``${mlgcn.run_dir:}``..."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

from mlgcn_lt.training.rundirs import resolve_run_dir

#: The repository root (holds ``conf/`` and ``train.py``).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


def default_workers() -> int:
    """DataLoader workers: the CPU count minus one for the training process, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def sqlite_url(path: str) -> str:
    """``sqlite:///<absolute path>``, creating the file's folder (SQLite creates the file, not its folder)."""
    p = Path(path).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def register_resolvers() -> None:
    resolvers = {
        "mlgcn.project_root": lambda: str(PROJECT_ROOT),
        "mlgcn.workers": default_workers,
        # A short random suffix so that two runs started in the same second never share a directory.
        "mlgcn.uid": lambda: secrets.token_hex(3),
        "mlgcn.run_dir": resolve_run_dir,
        # Optuna's study storage (conf/hparams_search/optuna.yaml)
        "mlgcn.sqlite": sqlite_url,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
