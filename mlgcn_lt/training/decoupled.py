"""Decoupled training: classifier re-training (cRT) of Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition", ICLR 2020.

Stage 1 learns the representation with plain sampling; stage 2 starts from a stage-1 checkpoint
(``model.decoupled.init_from``), keeps the representation fixed (``model.decoupled.freeze=representation``: the
shared trunk and every expert's last stage, without gradients and with BatchNorm in eval mode) and retrains the
classifier heads (re-initialised with ``model.decoupled.reset_heads=true``) with class-balanced sampling. See
``conf/experiment/crt.yaml``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlgcn_lt.models.experts import MultiExpertNet
from mlgcn_lt.utils.checkpoints import read_checkpoint


class Freeze(enum.StrEnum):
    """``model.decoupled.freeze``: ``none``, or ``representation`` (trunk + expert stages fixed)."""

    none = "none"
    representation = "representation"


@dataclass(frozen=True)
class DecoupledConfig:
    """``model.decoupled``: start from a stage-1 checkpoint (``init_from``: all its weights, or only the
    representation with ``reset_heads``) and keep the representation fixed (``freeze=representation``)."""

    init_from: str | None = None
    reset_heads: bool = False
    freeze: Freeze = Freeze.none

    @classmethod
    def of(cls, value: DecoupledConfig | Mapping | None) -> DecoupledConfig:
        """The options from a config node or a checkpoint's plain dict (``None``: the defaults)."""
        if value is None or isinstance(value, cls):
            return value or cls()
        d = dict(value)
        return cls(d.get("init_from"), bool(d.get("reset_heads", False)), Freeze(str(d.get("freeze", "none"))))

    def to_dict(self) -> dict:
        """Plain values (a checkpoint's hyper-parameters load with ``weights_only=True``)."""
        return {"init_from": self.init_from, "reset_heads": self.reset_heads, "freeze": self.freeze.value}


class Stage1Mismatch(ValueError):
    """A stage-1 checkpoint that does not fit the model being built; the message names the difference."""


@dataclass(frozen=True)
class Stage1:
    """The network weights of a stage-1 checkpoint (keys relative to ``MLGCNModule.net``) and its label-vector size."""

    path: Path
    state: dict[str, torch.Tensor]
    label_dim: int


def read_stage1(path: str | Path, *, classes: list[str], num_experts: int, backbone: str) -> Stage1:
    """Load a stage-1 checkpoint (``weights_only``) and refuse one with other classes, experts or backbone.

    A checkpoint written with EMA holds the averaged weights as its ``state_dict``: those are used.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, what="model.decoupled.init_from")
    hp: dict[str, Any] = ckpt.get("hyper_parameters") or {}
    theirs = {
        "classes": list((hp.get("stats") or {}).get("classes", [])),
        "num_experts": hp.get("num_experts"),
        "backbone": (hp.get("backbone") or {}).get("name"),
    }
    ours = {"classes": list(classes), "num_experts": num_experts, "backbone": backbone}
    differences = [f"{k}: checkpoint {theirs[k]!r}, model {ours[k]!r}" for k in ours if theirs[k] != ours[k]]
    if differences:
        if theirs["classes"] != ours["classes"]:
            missing = [c for c in ours["classes"] if c not in theirs["classes"]]
            extra = [c for c in theirs["classes"] if c not in ours["classes"]]
            differences.append(f"classes missing in the checkpoint {missing}, unknown to the data {extra}")
        raise Stage1Mismatch(f"model.decoupled.init_from={path} does not fit this model: " + "; ".join(differences))
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    label_dim = int((hp.get("restore") or {}).get("label_dim", 0))
    return Stage1(path, state, label_dim)


def representation_prefixes(net: MultiExpertNet) -> tuple[str, ...]:
    """State-dict prefixes of the representation: the shared trunk and each expert's last stage."""
    return ("trunk.", *(f"experts.{i}.stage." for i in range(net.num_experts)))


def load_stage1(net: MultiExpertNet, stage1: Stage1, *, heads: bool) -> None:
    """Copy the stage-1 representation into ``net`` (and the heads too when ``heads``); every copied key must exist
    with the same shape on both sides."""
    prefixes = representation_prefixes(net)
    wanted = {k: v for k, v in stage1.state.items() if heads or k.startswith(prefixes)}
    own = net.state_dict()
    expected = [k for k in own if heads or k.startswith(prefixes)]
    missing = sorted(set(expected) - set(wanted))
    unexpected = sorted(set(wanted) - set(own))
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in wanted.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise Stage1Mismatch(
            f"model.decoupled.init_from={stage1.path}: weights do not fit (other architecture options than stage 1?) "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shapes (checkpoint vs model) {shapes[:5]}"
        )
    net.load_state_dict(wanted, strict=False)


def freeze_representation(net: MultiExpertNet) -> list[nn.Module]:
    """Stop gradients through the trunk and the expert stages; return them (the caller keeps them in eval mode)."""
    frozen = net.representation()
    for m in frozen:
        m.requires_grad_(False)
    return frozen
