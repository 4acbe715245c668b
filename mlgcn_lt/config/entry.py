"""Console-script entry of the Hydra tools (``mlgcn-train``, ``mlgcn-eval``): the same configs as ``train.py`` /
``eval.py``, found through :data:`~mlgcn_lt.config.CONF_DIR` whatever the working directory."""

from __future__ import annotations

from collections.abc import Callable

import hydra
from dotenv import load_dotenv
from omegaconf import DictConfig

from mlgcn_lt.config import CONF_DIR, PROJECT_ROOT, setup_config_system


def run_hydra(config_name: str, task: Callable[[DictConfig], float | None]) -> None:
    """Run ``task`` under ``@hydra.main`` with ``conf/<config_name>.yaml`` (overrides from ``sys.argv``)."""
    load_dotenv(PROJECT_ROOT / ".env", override=False)
    setup_config_system(CONF_DIR)
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(task)()
