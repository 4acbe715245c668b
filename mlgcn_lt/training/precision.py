"""Gradient clipping that works with every precision and optimizer, fused ones included.

Lightning's ``MixedPrecision.clip_gradients`` refuses any clipping when the optimizer unscales its own gradients
(``fused=True`` Adam/AdamW/SGD: ``_step_supports_amp_scaling``), even under ``bf16-mixed``, which has no gradient
scaler and nothing to unscale. :func:`clip_gradients` clips such optimizers itself:

* no scaler (``bf16-mixed``): the gradients are the true gradients; clip them as usual;
* a ``GradScaler`` (``16-mixed`` on a GPU): the gradients are still multiplied by the loss scale ``s`` when clipping
  runs (the fused step unscales them later), so the bound is scaled too: ``||s g|| <= s c  <=>  ||g|| <= c`` (norm)
  and ``|s g_i| <= s c`` (value). This is exactly what unscale-then-clip does, without a host sync; steps whose
  gradients are not finite are still skipped by the scaler.

Every other case goes through Lightning's own clipping.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import GradClipAlgorithmType


def _grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def clip_gradients(
    module: L.LightningModule,
    optimizer: torch.optim.Optimizer,
    clip_val: float | None,
    algorithm: str | None,
) -> None:
    """Clip ``optimizer``'s gradients to ``clip_val`` (norm or value), whatever the precision plugin and optimizer."""
    if not clip_val or clip_val <= 0:
        return
    plugin = module.trainer.precision_plugin
    if not (isinstance(plugin, MixedPrecision) and _optimizer_handles_unscaling(optimizer)):
        module.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
        return
    grads = _grads(optimizer)
    if not grads:
        return
    scale: Any = None if plugin.scaler is None else plugin.scaler._scale  # a device tensor: no host sync
    bound: Any = clip_val if scale is None else clip_val * scale.float()
    if GradClipAlgorithmType(algorithm or "norm") == GradClipAlgorithmType.VALUE:
        for g in grads:
            lim = torch.as_tensor(bound, device=g.device, dtype=g.dtype)
            g.clamp_(min=-lim, max=lim)
        return
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    coef = torch.clamp(bound / (total + 1e-6), max=1.0)  # clip_grad_norm_'s rule
    for device_grads in _by_device(grads).values():
        torch._foreach_mul_(device_grads, coef.to(device_grads[0].device))


def _by_device(grads: list[torch.Tensor]) -> dict[torch.device, list[torch.Tensor]]:
    out: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        out.setdefault(g.device, []).append(g)
    return out
