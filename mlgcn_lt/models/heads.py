"""Classification heads. Interface: ``head(feature_map (B, D, H, W)) → logits (B, C)``.

Each expert owns one head; a head owns its pooling and attention, so experts never share state by accident.
Every head is built with ``in_features``, ``stats``, ``label_vectors``, ``pooling`` and ``attention``; heads that
have no use for one ignore it (an attention they cannot apply is an error). Hydra hands ``stats`` over as a config
node: use its fields (``len(stats.classes)``), not its properties. ``gcn`` and ``linear`` live here with
``csra``; ``ml_decoder`` in ``ml_decoder.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.models.attention import NoAttention
from mlgcn_lt.models.gcn import AdjacencyForm, LabelGCN, build_adjacency, normalize_adjacency


def classifier_logits(image: torch.Tensor, classifiers: torch.Tensor) -> torch.Tensor:
    """Dot product of image vectors (B, D) with shared (C, D) or per-sample (B, C, D) classifiers → (B, C)."""
    if classifiers.dim() == 2:
        return image @ classifiers.t()
    return torch.einsum("bd,bcd->bc", image, classifiers)


class GCNHead(nn.Module):
    """ML-GCN head: pooling → (attention) → dot product with the classifiers a GCN makes from label vectors."""

    def __init__(
        self,
        in_features: int,
        stats: LabelStats,
        label_vectors: np.ndarray,
        pooling: nn.Module,
        attention: nn.Module | None = None,
        *,
        hidden: Sequence[int] = (1024,),
        threshold: float = 0.4,
        reweight: float = 0.25,
        form: AdjacencyForm = "paper",
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        adjacency = normalize_adjacency(
            build_adjacency(stats.cooccurrence_counts, stats.counts, threshold, reweight, form),
            transpose=(form == "release"),
        )
        self.pooling = pooling
        self.attention = attention if attention is not None else NoAttention()
        self.gcn = LabelGCN(label_vectors, adjacency, in_features, tuple(hidden), negative_slope)

    def classifiers(self) -> torch.Tensor:
        """The (C, D) classifier matrix (before attention)."""
        return self.gcn()

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        image = self.pooling(fmap)
        image, classifiers = self.attention(image, self.classifiers().to(image.dtype))
        return classifier_logits(image, classifiers)


def no_attention(attention: nn.Module | None, head: str) -> None:
    """Heads that do not pool into one image vector cannot apply the image/classifier attention: say so."""
    if attention is not None and not isinstance(attention, NoAttention):
        raise ValueError(
            f"model.attention={type(attention).__name__} has no effect with the {head} head (it attends over its "
            "own spatial features): set model/attention=none"
        )


class LinearHead(nn.Module):
    """Non-graph baseline: pooling → (attention) → dropout → linear classifier W (C, D) + b.

    The rows of W play the role of the GCN's classifiers, so the attention options apply unchanged; with
    ``attention=none`` this is exactly ``Linear(pooling(x))``. ``label_vectors`` is not used.
    """

    def __init__(
        self,
        in_features: int,
        stats: LabelStats,
        label_vectors: np.ndarray | None,
        pooling: nn.Module,
        attention: nn.Module | None = None,
        *,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.attention = attention if attention is not None else NoAttention()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, len(stats.classes), bias=bias)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        image = self.dropout(self.pooling(fmap))
        image, classifiers = self.attention(image, self.fc.weight.to(image.dtype))
        logits = classifier_logits(image, classifiers)
        return logits if self.fc.bias is None else logits + self.fc.bias.to(logits.dtype)


class CSRAHead(nn.Module):
    """Class-specific residual attention, Zhu & Wu ICCV 2021 (Sec. 3), one CSRA module per temperature.

    Per head, with spatial scores s_cj = x_jᵀ m_c / ‖m_c‖ (1×1 conv, no bias; ``normalize=False``: without the
    division): logit_c = mean_j s_cj + λ · Σ_j softmax_j(T · s_cj) · s_cj; T = ∞ is max_j s_cj. Multi-head CSRA sums
    the heads' logits; the paper's settings are H=1: [1], H=2: [1, ∞], H=4: [1, 2, 4, ∞], H=6: [1..5, ∞],
    H=8: [1..7, ∞]. Pools by itself: ``pooling`` and ``label_vectors`` are not used.
    """

    def __init__(
        self,
        in_features: int,
        stats: LabelStats,
        label_vectors: np.ndarray | None = None,
        pooling: nn.Module | None = None,
        attention: nn.Module | None = None,
        *,
        temperatures: Sequence[float] = (1.0,),
        lam: float = 0.1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        no_attention(attention, "csra")
        self.temperatures = [float(t) for t in temperatures]
        if not self.temperatures or any(not t > 0 for t in self.temperatures):
            raise ValueError(f"model.head.temperatures: a non-empty list of T > 0 (.inf = max), got {temperatures}")
        self.lam, self.normalize = float(lam), bool(normalize)
        self.classifiers = nn.Parameter(torch.empty(len(self.temperatures), len(stats.classes), in_features))
        bound = 1.0 / math.sqrt(in_features)  # a 1×1 conv's default initialisation
        nn.init.uniform_(self.classifiers, -bound, bound)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        weights = self.classifiers.to(fmap.dtype)
        if self.normalize:
            weights = weights / weights.norm(dim=-1, keepdim=True)
        scores = torch.einsum("bdp,hcd->hbcp", fmap.flatten(2), weights)  # (heads, B, C, positions)
        logits = scores.new_zeros(scores.shape[1:3])
        for score, t in zip(scores, self.temperatures, strict=True):
            if math.isinf(t):
                attended = score.amax(dim=-1)
            else:
                attended = (torch.softmax(t * score.float(), dim=-1) * score.float()).sum(-1).to(score.dtype)
            logits = logits + score.mean(dim=-1) + self.lam * attended
        return logits

    def extra_repr(self) -> str:
        return f"temperatures={self.temperatures}, lam={self.lam}, normalize={self.normalize}"
