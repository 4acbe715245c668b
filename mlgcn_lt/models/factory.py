"""Network construction from the model's part configs: backbone, label embedding, pooling, attention and heads,
replicated into experts (:class:`~mlgcn_lt.models.experts.MultiExpertNet`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.models.experts import MultiExpertNet


def as_config(c: DictConfig | Mapping[str, Any] | None) -> DictConfig | None:
    """A part config as a DictConfig (hyper-parameters come back from a checkpoint as plain dicts)."""
    return None if c is None else (c if isinstance(c, DictConfig) else OmegaConf.create(dict(c)))


def build_net(
    hp: Mapping[str, Any], stats: LabelStats, *, label_dim: int | None = None, pretrained: bool = True
) -> MultiExpertNet:
    """The network of :class:`~mlgcn_lt.training.module.MLGCNModule`'s hyper-parameters ``hp``.

    ``label_dim``: the weights (label vectors included) come from a checkpoint: zero label vectors of that width
    are allocated instead of fitting the label embedding. ``pretrained=False``: no pretrained backbone download.
    """
    backbone_cfg = as_config(hp["backbone"])
    if not pretrained:
        backbone_cfg = OmegaConf.merge(backbone_cfg, {"pretrained": "none"})
    if label_dim is not None:
        vectors = torch.zeros(stats.num_classes, int(label_dim)).numpy()
    else:
        vectors = instantiate(as_config(hp["label_embedding"]))(stats)
    backbone = instantiate(backbone_cfg)
    shared: dict[int, torch.nn.Module] = {}  # one attention layer for all experts if share_attention

    def make_attention(dim: int) -> torch.nn.Module | None:
        if hp["attention"] is None:
            return None
        if not hp["share_attention"]:
            return instantiate(as_config(hp["attention"]), dim=dim)
        if dim not in shared:
            shared[dim] = instantiate(as_config(hp["attention"]), dim=dim)
        return shared[dim]

    def head_factory(in_features: int) -> torch.nn.Module:
        return instantiate(
            as_config(hp["head"]),
            in_features=in_features,
            stats=stats,
            label_vectors=vectors,
            pooling=instantiate(as_config(hp["pooling"])),
            attention=make_attention(in_features),
        )

    return MultiExpertNet(
        backbone,
        head_factory,
        num_experts=hp["num_experts"],
        init=hp["expert_init"],
        width=hp["expert_width"],
        ensemble=hp["ensemble"],
        input_norm=hp["input_norm"],
        activation_checkpointing=hp.get("activation_checkpointing", False),
    )
