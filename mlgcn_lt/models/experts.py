"""N experts over one shared trunk (Figure 3): trunk → E × [own last stage → own head] → ensemble.

The trunk runs once per batch; each expert owns a copy of the backbone's last stage (``init="pretrained_copy"``,
the paper) or a freshly initialised one (``init="random"``, the authors' release).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import nn

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
        shared = self.trunk(self.normalize(images))
        expert_logits = torch.stack([expert(shared) for expert in self.experts])
        if self.ensemble == "probs":
            p = torch.sigmoid(expert_logits.float()).mean(0).clamp(1e-7, 1 - 1e-7)
            logits = torch.logit(p).to(expert_logits.dtype)
        else:
            logits = expert_logits.mean(0)
        return ModelOutput(logits, expert_logits)
