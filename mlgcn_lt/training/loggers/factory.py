"""Weights & Biases logger that never stops training: online → offline → CSV, each fallback with a loud warning.

``conf/logger/wandb.yaml`` instantiates :func:`wandb_logger`; ``pipeline.train`` uploads the resolved config with
:func:`log_config` and closes the run with :func:`finish_wandb` (each multirun job is its own W&B run).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: Metrics whose best value (over epochs) the run summary keeps: what the dashboards compare.
BEST_METRICS = ("val/mAP", "val/mAP_head", "val/mAP_middle", "val/mAP_tail")
#: Overrides left out of run names: where things live and how they are logged, not what is trained.
DEFAULT_NAME_EXCLUDE = ("hydra", "paths", "logger", "ckpt_path", "data.root")
MAX_NAME_LENGTH = 128


def run_name(
    overrides: Sequence[str] | str | None,
    experiment_name: str | None = None,
    seed: int | None = None,
    exclude_keys: Sequence[str] = DEFAULT_NAME_EXCLUDE,
) -> str:
    """``+experiment=ablation_lse,seed=1`` from the command-line overrides, else ``<experiment_name>_seed<seed>``.

    Overrides of keys in (or under) ``exclude_keys`` and absolute-path values are left out.
    """
    parts = []
    if isinstance(overrides, str):  # Hydra's ``override_dirname`` (values with commas are cut; prefer the list)
        overrides = overrides.split(",") if overrides else []
    for item in overrides or ():
        key, _, value = item.lstrip("+~").partition("=")
        if any(key == k or key.startswith((k + ".", k + "/")) for k in exclude_keys) or os.path.isabs(value):
            continue
        parts.append(f"{key}={value}")
    name = ",".join(parts) or f"{experiment_name or 'run'}_seed{seed if seed is not None else 0}"
    return name if len(name) <= MAX_NAME_LENGTH else name[: MAX_NAME_LENGTH - 1] + "…"


def _blank_to_none(value: str | None) -> str | None:
    """``.env`` lines like ``WANDB_ENTITY=`` give empty strings: treat them as unset."""
    return value if value else None


def _start(mode: str | None, init_timeout: float, **kwargs: Any) -> WandbLogger:
    """Create the logger and start its run now (Lightning would start it lazily, where a failure stops training)."""
    import wandb

    os.makedirs(kwargs["save_dir"], exist_ok=True)  # W&B looks for the git repository from there
    logger = WandbLogger(mode=mode, settings=wandb.Settings(init_timeout=init_timeout), **kwargs)
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)  # Lightning passes None: W&B warns it is deprecated
    try:
        define_metrics(logger.experiment)  # starts the run: raises here if W&B cannot start
    except Exception:
        finish_wandb()  # a half-started run would be reused by the next attempt
        raise
    return logger


def define_metrics(run: Any) -> None:
    """Epoch as x-axis of ``val/*``, ``dev/*`` and ``test/*``; the summary keeps the best of :data:`BEST_METRICS`."""
    if not hasattr(run, "define_metric"):  # a non-zero DDP rank's dummy experiment
        return
    run.define_metric("epoch")
    for pattern in ("val/*", "dev/*", "test/*"):
        run.define_metric(pattern, step_metric="epoch", step_sync=True)
    for key in BEST_METRICS:
        run.define_metric(key, step_metric="epoch", step_sync=True, summary="max")


def _sync_hint(save_dir: str) -> str:
    return f"`wandb sync {os.path.join(save_dir, 'wandb', 'offline-run-*')}`"


def wandb_logger(
    *,
    save_dir: str,
    project: str | None = None,
    entity: str | None = None,
    mode: str | None = None,
    name: str | None = None,
    overrides: list[str] | str | None = None,
    name_exclude_keys: list[str] | None = None,
    group: str | None = None,
    job_type: str = "train",
    tags: list[str] | str | None = None,
    seed: int | None = None,
    log_model: Any = False,
    init_timeout: float = 60.0,
    offline_fallback: bool = True,
) -> Logger:
    """A started :class:`WandbLogger`; if W&B cannot start, an offline one, else a CSV logger (with a warning).

    Args:
        save_dir: the run directory; W&B writes ``<save_dir>/wandb/``.
        project, entity: W&B project and team / user (``None``: W&B's own defaults and environment).
        mode: ``online`` | ``offline`` | ``disabled`` (``None``: ``WANDB_MODE`` or ``wandb online/offline``).
        name: display name; default: from ``overrides`` (see :func:`run_name`), else ``<group>_seed<seed>``.
        overrides: the command-line overrides (a list, or Hydra's ``override_dirname`` string). The list and
            ``tags`` also accept a plain string: typed list fields could not hold interpolations of ``${tags}``.
        group: groups runs on the dashboard (the experiment name); also added to the tags.
        job_type: ``train`` or ``eval``.
        log_model: upload checkpoints as artifacts: ``false``, ``true`` (best / last at the end) or ``all``.
        init_timeout: seconds W&B may take to start before falling back.
        offline_fallback: when online start fails, log offline (sync later) instead of to CSV only.
    """
    mode = _blank_to_none(mode)
    group = _blank_to_none(group)
    exclude = DEFAULT_NAME_EXCLUDE if name_exclude_keys is None else name_exclude_keys
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    tags = list(dict.fromkeys([*tags, *([group] if group else [])]))
    kwargs: dict[str, Any] = {
        "save_dir": save_dir,
        "project": _blank_to_none(project),
        "entity": _blank_to_none(entity),
        "name": name or run_name(overrides, group, seed, exclude),
        "group": group,
        "job_type": job_type,
        "tags": tags,
        "log_model": log_model,
        "init_timeout": init_timeout,
    }
    try:
        return _start(mode, **kwargs)
    except Exception as err:  # W&B raises UsageError, CommError, ValueError... none may stop training
        first = f"{type(err).__name__}: {err}".strip()
    effective = mode or os.environ.get("WANDB_MODE", "online")
    if offline_fallback and effective not in ("offline", "dryrun", "disabled"):
        try:
            logger = _start("offline", **kwargs)
        except Exception as err:
            first += f"; offline too: {type(err).__name__}: {err}"
        else:
            log.warning(
                "W&B could not start (mode %s: %s). Training continues, logging OFFLINE to %s: nothing reaches the "
                "dashboard until you upload it with %s.",
                effective,
                first,
                os.path.join(save_dir, "wandb"),
                _sync_hint(save_dir),
            )
            return logger
    csv_dir = os.path.join(save_dir, "csv")
    log.warning(
        "W&B could not start (%s). Training continues WITHOUT W&B (no run, tables or artifacts): metrics go to "
        "%s/metrics.csv only. Check WANDB_MODE / WANDB_API_KEY / WANDB_PROJECT in .env.",
        first,
        csv_dir,
    )
    return CSVLogger(save_dir=save_dir, name="csv", version="")


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers (none with ``logger=csv``)."""
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def log_config(trainer: L.Trainer, cfg: DictConfig | dict[str, Any]) -> None:
    """Upload the resolved config to W&B (filters and group-bys on the dashboard); no-op without a W&B logger."""
    loggers = wandb_loggers(trainer)
    if not loggers:
        return
    params = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else cfg
    for logger in loggers:
        logger.log_hyperparams(dict(params))


def log_summary(trainer: L.Trainer, values: dict[str, Any]) -> None:
    """Set W&B run summary values (e.g. ``splits/<split>``: where each split's numbers come from); no-op without
    a W&B logger."""
    for logger in wandb_loggers(trainer):
        summary = getattr(logger.experiment, "summary", None)
        if summary is not None:
            summary.update(values)


def finish_wandb() -> None:
    """Close the active W&B run, if any (marked failed when called while an exception propagates)."""
    wandb = sys.modules.get("wandb")  # never import W&B just to find it unused
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    failed = sys.exc_info()[0] is not None
    try:
        wandb.finish(exit_code=1 if failed else 0)
    except Exception as err:  # closing must not hide the run's result or its exception
        log.warning("W&B run could not be closed cleanly (%s: %s)", type(err).__name__, err)


__all__ = [
    "BEST_METRICS",
    "define_metrics",
    "finish_wandb",
    "log_config",
    "log_summary",
    "run_name",
    "wandb_logger",
    "wandb_loggers",
]
