"""Run directories as train.py writes them: discovery (dirs, sweeps, globs) and reading (config, metrics, stats)."""

from __future__ import annotations

import glob
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

LOG_TAIL_LINES = 8


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


@dataclass
class Run:
    """One run directory: its resolved config, its metrics (None when there is no readable metrics.json)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    error: str | None = None  # why there are no metrics

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Read ``config.yaml`` (else ``.hydra/config.yaml``, unresolved), ``metrics.json`` and the overrides."""
        path = Path(path)
        config = _read_yaml(path / "config.yaml") or _read_yaml(path / ".hydra" / "config.yaml") or {}
        overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
        run = cls(path, config if isinstance(config, dict) else {}, None, [str(o) for o in overrides])
        metrics_file = path / "metrics.json"
        if not metrics_file.is_file():
            run.error = "no metrics.json (crashed, stopped, or still running)"
            return run
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            run.error = f"metrics.json unreadable: {e}"
            return run
        if not isinstance(metrics, dict):
            run.error = f"metrics.json holds a {type(metrics).__name__}, expected a dict"
            return run
        run.metrics = metrics
        if metrics.get("trained_steps") == 0:
            run.error = "metrics.json says it trained 0 optimizer steps: the metrics are those of an untrained model"
        return run

    @property
    def ok(self) -> bool:
        """Metrics that are a result: present, and of a model that trained at least one step."""
        return self.metrics is not None and self.error is None

    @property
    def experiment(self) -> str:
        """``experiment_name`` of the config, else the ``+experiment=`` override, else ``unknown``."""
        name = self.config.get("experiment_name")
        if isinstance(name, str) and name and "${" not in name:
            return name
        for o in self.overrides:
            key, _, value = o.lstrip("+~").partition("=")
            if key == "experiment" and value:
                return value
        return "unknown"

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def value(self, key: str) -> float:
        """A metric as a float; NaN when missing or null."""
        v = (self.metrics or {}).get(key)
        try:
            return float(v) if v is not None else math.nan
        except (TypeError, ValueError):
            return math.nan

    def checkpoint(self) -> Path | None:
        """The best checkpoint (``metrics.json``'s, also if the run dir moved), else the newest, else ``last.ckpt``."""
        best = (self.metrics or {}).get("best_checkpoint")
        ckpt_dir = self.path / "checkpoints"
        if best:
            for candidate in (Path(best), ckpt_dir / Path(best).name):
                if candidate.is_file():
                    return candidate
        found = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", -p.stat().st_mtime))
        return found[0] if found else None

    @cached_property
    def label_stats(self) -> dict[str, Any] | None:
        """``label_stats.json``, else the statistics saved in the checkpoint's hyper-parameters, else None."""
        stats_file = self.path / "label_stats.json"
        if stats_file.is_file():
            try:
                return json.loads(stats_file.read_text())
            except (OSError, json.JSONDecodeError):
                pass
        ckpt = self.checkpoint()
        if ckpt is None:
            return None
        from mlgcn_lt.utils.checkpoints import CheckpointError, read_checkpoint

        try:
            hparams = read_checkpoint(ckpt).get("hyper_parameters") or {}
        except (CheckpointError, OSError):  # a truncated or foreign checkpoint: no statistics, the figures say so
            return None
        return hparams.get("stats")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the run's ``*.log`` (Hydra's job log), or an empty string."""
        logs = sorted(self.path.glob("*.log"), key=lambda p: p.stat().st_mtime)
        if not logs:
            return ""
        text = logs[-1].read_text(errors="replace").rstrip().splitlines()
        return "\n".join(text[-lines:])

    def last_modified(self) -> float:
        """Newest modification time of the run directory's files (a hint: crashed long ago, or still running?)."""
        times = [p.stat().st_mtime for p in self.path.rglob("*") if p.is_file()]
        return max(times, default=self.path.stat().st_mtime)


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / ".hydra").is_dir()


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def find_run_dirs(path: Path) -> Iterator[Path]:
    """``path`` if it is a run, else the runs below it (depth first, job folders in numeric order)."""
    if is_run_dir(path):
        yield path
        return
    children = [p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    for child in sorted(children, key=_natural_key):
        yield from find_run_dirs(child)


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Expand globs (``**`` allowed); a path or pattern that matches nothing is an error naming it."""
    out: list[Path] = []
    for p in paths:
        s = str(p)
        matches = sorted(glob.glob(s, recursive=True)) if glob.has_magic(s) else ([s] if Path(s).exists() else [])
        if not matches:
            raise FileNotFoundError(f"no run directory matches {s!r}")
        out.extend(Path(m) for m in matches)
    return out


def collect_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under the given directories / globs, each once, in the order found."""
    seen: set[Path] = set()
    runs = []
    for top in expand(paths):
        if top.is_file():  # e.g. a glob over 'outputs/**/metrics.json': the file's run
            if not is_run_dir(top.parent):
                raise FileNotFoundError(f"{top} is a file outside any run directory")
            top = top.parent
        for d in find_run_dirs(top):
            key = d.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(Run.load(d))
    return runs
