"""Classification heads. Interface: ``head(feature_map (B, D, H, W)) → logits (B, C)``.

Each expert owns one head; a head owns its pooling and attention, so experts never share state by accident.
"""

from __future__ import annotations

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
            build_adjacency(stats.cooccurrence, stats.counts, threshold, reweight, form),
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
