"""Configuration checks before training (impossible or silently wrong settings) and checkpoint hyper-parameter
differences. Non-finite losses: :mod:`mlgcn_lt.training.nonfinite`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig

#: Total stride of every supported backbone (ResNet, DenseNet, ConvNeXt, EfficientNet-V2).
BACKBONE_STRIDE = 32


def check_config(cfg: DictConfig) -> None:
    """Combinations that cannot work, refused before any data is read, with what to change."""
    problems: list[str] = []
    model, data = cfg.get("model", {}), cfg.get("data", {})
    experts = model.get("num_experts", 1)
    if experts is not None and int(experts) < 1:
        problems.append(f"model.num_experts={experts}: at least one expert is needed (1 = vanilla ML-GCN)")
    size = data.get("image_size")
    if size is not None and (int(size) < BACKBONE_STRIDE or int(size) % BACKBONE_STRIDE):
        lower = max(BACKBONE_STRIDE, int(size) // BACKBONE_STRIDE * BACKBONE_STRIDE)
        problems.append(
            f"data.image_size={size} is not a positive multiple of {BACKBONE_STRIDE}, the total stride of the "
            f"backbones: use e.g. {lower} or {lower + BACKBONE_STRIDE}"
        )
    batch_sizes = {"batch_size": data.get("batch_size"), "loader.eval_batch_size": _get(data, "loader.eval_batch_size")}
    for key, value in batch_sizes.items():
        if value is not None and int(value) < 1:
            problems.append(f"data.{key}={value}: must be at least 1")
    trainer = cfg.get("trainer", {})
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        value = trainer.get(key)
        if value is not None and not isinstance(value, bool) and float(value) == 0:
            problems.append(
                f"trainer.{key}={value}: no training step would run (the untrained model would be tested and "
                "reported); use at least 1, or eval.py to score an existing checkpoint"
            )
    problems += precision_problems(cfg)
    if problems:
        raise ValueError("impossible configuration:\n  " + "\n  ".join(problems))


#: The smallest positive float16 (a subnormal): anything below rounds to 0 in float16 arithmetic.
FLOAT16_TINY = float(torch.finfo(torch.float16).smallest_normal) * 2.0**-10


def precision_problems(cfg: DictConfig) -> list[str]:
    """Precision x optimizer combinations that cannot train (every other one does: see docs/resume_and_precision.md).

    ``16-true`` keeps the weights, and so Adam's moment estimates, in float16. The per-tensor (``fused: false``)
    Adam adds the default ``eps`` (1e-8) in float16, where it is 0: a parameter whose gradient is 0 then steps by
    0 / 0 = NaN at the first step (measured). The fused kernel computes in float32 and trains.
    """
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    optimizer = cfg.get("model", {}).get("optimizer") or {}
    adam = "Adam" in str(optimizer.get("_target_", "")) and not optimizer.get("fused")
    eps = optimizer.get("eps", 1e-8)
    if precision in ("16-true", "16", "half") and adam and eps is not None and float(eps) < FLOAT16_TINY:
        return [
            f"trainer.precision={precision} with model.optimizer.fused=false keeps Adam's state in float16, where "
            f"model.optimizer.eps={eps} is 0 (NaN at the first step): set model.optimizer.fused=true (float32 "
            "arithmetic), use trainer.precision=bf16-true / 16-mixed / bf16-mixed, or set model.optimizer.eps=1e-4"
        ]
    return []


def checkpoint_differences(saved: Mapping[str, Any], current: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """Human-readable differences between a checkpoint's hyper-parameters and the model's, for ``keys``."""
    out = []
    for key in keys:
        a, b = _get(saved, key), _get(current, key)
        if a != b:
            out.append(f"{key}: checkpoint {a!r}, this model {b!r}")
    return out


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return list(d) if isinstance(d, list | tuple) else d
