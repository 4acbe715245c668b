"""Hydra glue: OmegaConf resolvers and the structured-config schemas (see ``schemas.py``)."""

from __future__ import annotations

from pathlib import Path

from mlgcn_lt.config.resolvers import CONF_DIR, PROJECT_ROOT, default_workers, register_resolvers, sqlite_url
from mlgcn_lt.config.schemas import register_schemas


def setup_config_system(conf_dir: str | Path = CONF_DIR) -> None:
    """Register resolvers and schemas; call before Hydra composes (train.py, eval.py and tests do)."""
    register_resolvers()
    register_schemas(conf_dir)


__all__ = [
    "CONF_DIR",
    "PROJECT_ROOT",
    "default_workers",
    "register_resolvers",
    "register_schemas",
    "setup_config_system",
    "sqlite_url",
]
