"""N experts over one shared trunk (Figure 3): trunk → E × [own last stage → own head] → ensemble.

The trunk runs once per batch; each expert owns a copy of the backbone's last stage (``init="pretrained_copy"``,
the paper) or a freshly initialised one (``init="random"``, the authors' release). With ``activation_checkpointing``
the trunk's stem and every residual block (trunk and experts) keep only their input during training and recompute
the rest in the backward pass: about one more forward pass of compute for a much smaller activation peak.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mlgcn_lt.models.backbones import InputNormalizer, TrunkSplit


class ModelOutput(NamedTuple):
    """Ensemble logits (B, C) and per-expert logits (E, B, C)."""

    logits: torch.Tensor
    expert_logits: torch.Tensor


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every sub-module that knows how (conv, linear, norm layers)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


class Expert(nn.Module):
    """One expert: its own last CNN stage and its own head."""

    def __init__(self, stage: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.stage = stage
        self.head = head

    def forward(self, trunk_features: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(trunk_features))


def checkpoint_segments(stage: nn.Module) -> list[nn.Module]:
    """Units to checkpoint in ``stage``: each block of a stage (a ``Sequential`` of blocks, like ResNet's layer4), or,
    for a trunk of stages, each block of each stage with the modules between them (the stem) grouped."""
    if not isinstance(stage, nn.Sequential):
        return [stage]
    if not any(isinstance(child, nn.Sequential) for child in stage):
        return list(stage)
    units: list[nn.Module] = []
    loose: list[nn.Module] = []
    for child in stage:
        if isinstance(child, nn.Sequential):
            if loose:
                units.append(nn.Sequential(*loose))
                loose = []
            units.extend(child)
        else:
            loose.append(child)
    if loose:
        units.append(nn.Sequential(*loose))
    return units


@contextlib.contextmanager
def _no_running_stat_update(module: nn.Module) -> Iterator[None]:
    """The recomputation must not update BatchNorm running statistics a second time (momentum 0 leaves them as they
    are; the batch counter is put back)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.sub_(1)


def run_checkpointed(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``stage(x)`` keeping only each unit's input for the backward pass (:func:`checkpoint_segments`)."""
    for unit in checkpoint_segments(stage):
        x = checkpoint(
            unit,
            x,
            use_reentrant=False,
            context_fn=lambda unit=unit: (contextlib.nullcontext(), _no_running_stat_update(unit)),
        )
    return x


class MultiExpertNet(nn.Module):
    """Input normalisation → shared trunk → experts → mean of logits (or of probabilities)."""

    def __init__(
        self,
        backbone: TrunkSplit,
        head_factory: Callable[[int], nn.Module],
        *,
        num_experts: int = 1,
        init: Literal["pretrained_copy", "random"] = "pretrained_copy",
        width: int | None = None,
        ensemble: Literal["logits", "probs"] = "logits",
        input_norm: Literal["imagenet", "unit"] = "imagenet",
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"model.num_experts must be >= 1, got {num_experts}")
        narrow = width is not None and width != backbone.num_features
        if narrow and init != "random":
            raise ValueError(
                f"model.expert_width={width} differs from {backbone.name}'s {backbone.num_features} channels, so the "
                "expert stages cannot start from the backbone's weights: set model.expert_init=random"
            )
        if narrow and backbone.make_stage is None:
            raise ValueError(f"backbone {backbone.name} does not support model.expert_width")
        self.normalize = InputNormalizer(3, input_norm)
        self.trunk = backbone.trunk
        self.num_features = width if narrow else backbone.num_features
        self.ensemble = ensemble
        self.activation_checkpointing = bool(activation_checkpointing)
        experts = []
        for _ in range(num_experts):
            if narrow:
                stage = backbone.make_stage(width)
            else:
                stage = copy.deepcopy(backbone.last_stage)
                if init == "random":
                    reset_parameters(stage)
            experts.append(Expert(stage, head_factory(self.num_features)))
        self.experts = nn.ModuleList(experts)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def representation(self) -> list[nn.Module]:
        """The shared trunk and every expert's last stage: what decoupled training (cRT) keeps fixed."""
        return [self.trunk, *(expert.stage for expert in self.experts)]

    def heads(self) -> list[nn.Module]:
        """Every expert's classifier head (pooling, attention, classifiers)."""
        return [expert.head for expert in self.experts]

    def forward(self, images: torch.Tensor) -> ModelOutput:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            shared = run_checkpointed(self.trunk, self.normalize(images))
            expert_logits = torch.stack([e.head(run_checkpointed(e.stage, shared)) for e in self.experts])
        else:
            shared = self.trunk(self.normalize(images))
            expert_logits = torch.stack([expert(shared) for expert in self.experts])
        if self.ensemble == "probs":
            p = torch.sigmoid(expert_logits.float()).mean(0).clamp(1e-7, 1 - 1e-7)
            logits = torch.logit(p).to(expert_logits.dtype)
        else:
            logits = expert_logits.mean(0)
        return ModelOutput(logits, expert_logits)
