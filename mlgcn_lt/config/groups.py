"""The config groups are the registries: the options of a kind of part are the files ``conf/<group>/*.yaml``.

Tools and tests enumerate them here instead of keeping their own lists, so adding an option is adding its YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hydra.utils import get_object

from mlgcn_lt.config.resolvers import CONF_DIR


def config_options(group: str, conf_dir: str | Path = CONF_DIR) -> list[str]:
    """The sorted option names of ``conf/<group>/`` (e.g. ``config_options("data/sampler")``); files starting with
    ``_`` (``conf/data/_base.yaml``: what the options share) are not options."""
    folder = Path(conf_dir) / group
    if not folder.is_dir():
        raise FileNotFoundError(f"no config group {group!r}: {folder} is not a directory")
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


def option_target(group: str, option: str, conf_dir: str | Path = CONF_DIR) -> Any:
    """The class or function ``conf/<group>/<option>.yaml`` instantiates (its ``_target_``)."""
    path = Path(conf_dir) / group / f"{option}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown {group} option {option!r}; known: {config_options(group, conf_dir)}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict) or "_target_" not in data:
        raise ValueError(f"{path}: no top-level _target_")
    return get_object(data["_target_"])
