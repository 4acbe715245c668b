"""ML-Decoder head (Ridnik et al. WACV 2023): label queries cross-attend to the spatial features.

Spatial tokens x_j (B, HW, D) → Linear(D, dim) + ReLU → decoder layers whose queries attend to them (no
self-attention between queries) → group fully-connected: K groups, group k decodes the classes
k·g … k·g + g − 1 with g = ⌈C / K⌉ through its own (dim, g) matrix. Queries (``queries``):

- ``learned``: a trainable (K, dim) embedding;
- ``random``: fixed N(0, 1) vectors (the official code, which freezes its query embedding);
- ``label_vectors``: ReLU(Linear(d, dim)) of the label vectors (ML-Decoder's zero-shot form), group k's query from
  the mean vector of its classes.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.models.heads import no_attention

QueryInit = Literal["learned", "random", "label_vectors"]


class CrossAttentionLayer(nn.Module):
    """A Transformer decoder layer without self-attention (post-norm, as the official layer).

    q ← LN(q + drop(q)) (what remains of the removed self-attention block), q ← LN(q + drop(MHA(q, x, x))),
    q ← LN(q + drop(FFN(q))).
    """

    def __init__(self, dim: int, heads: int = 8, feedforward: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ml_decoder: model.head.dim={dim} is not divisible by model.head.heads={heads}")
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, feedforward), nn.ReLU(), nn.Dropout(dropout), nn.Linear(feedforward, dim)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.drops = nn.ModuleList(nn.Dropout(dropout) for _ in range(3))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = self.norms[0](queries + self.drops[0](queries))
        q = self.norms[1](q + self.drops[1](self.attn(q, memory, memory, need_weights=False)[0]))
        return self.norms[2](q + self.drops[2](self.ffn(q)))


def group_layout(num_classes: int, groups: int | None) -> tuple[int, int]:
    """(K, g): g = ⌈C / K_requested⌉ classes per group; K = ⌈C / g⌉, so that no group decodes nothing.

    ``None`` requests min(C, 100) groups (the paper's default): one query per class up to 100 classes.
    """
    requested = min(num_classes, 100) if groups is None else int(groups)
    if requested < 1:
        raise ValueError(f"model.head.groups must be >= 1 or null, got {groups}")
    per_group = math.ceil(num_classes / min(requested, num_classes))
    return math.ceil(num_classes / per_group), per_group


class MLDecoderHead(nn.Module):
    """ML-Decoder: (B, D, H, W) → (B, C). ``pooling`` is not used (the queries attend to every position)."""

    def __init__(
        self,
        in_features: int,
        stats: LabelStats,
        label_vectors: np.ndarray | None = None,
        pooling: nn.Module | None = None,
        attention: nn.Module | None = None,
        *,
        groups: int | None = None,
        dim: int = 768,
        heads: int = 8,
        layers: int = 1,
        feedforward: int = 2048,
        dropout: float = 0.1,
        queries: QueryInit = "learned",
    ) -> None:
        super().__init__()
        no_attention(attention, "ml_decoder")
        self.num_classes = len(stats.classes)
        self.num_groups, self.per_group = group_layout(self.num_classes, groups)
        self.queries_from = queries
        self.embed = nn.Linear(in_features, dim)
        if queries == "learned":
            self.query = nn.Parameter(torch.randn(self.num_groups, dim))
        elif queries == "random":
            self.register_buffer("query", torch.randn(self.num_groups, dim))
        elif queries == "label_vectors":
            if label_vectors is None:
                raise ValueError("model.head.queries=label_vectors needs label vectors (model.label_embedding)")
            vectors = torch.as_tensor(np.asarray(label_vectors), dtype=torch.float32).clone()
            self.register_buffer("label_vectors", vectors)
            member = torch.zeros(self.num_groups, self.num_classes)
            for c in range(self.num_classes):
                member[c // self.per_group, c] = 1.0
            self.register_buffer("group_mean", member / member.sum(1, keepdim=True), persistent=False)
            self.query_proj = nn.Linear(vectors.shape[1], dim)
        else:
            raise ValueError(f"unknown model.head.queries {queries!r}; known: ['label_vectors', 'learned', 'random']")
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, feedforward, dropout) for _ in range(layers))
        self.group_fc = nn.Parameter(torch.empty(self.num_groups, dim, self.per_group))
        nn.init.xavier_normal_(self.group_fc)
        self.bias = nn.Parameter(torch.zeros(self.num_classes))

    def group_queries(self) -> torch.Tensor:
        """The (K, dim) queries."""
        if self.queries_from == "label_vectors":
            return F.relu(self.query_proj(self.group_mean @ self.label_vectors))
        return self.query

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        memory = F.relu(self.embed(fmap.flatten(2).transpose(1, 2)))  # (B, HW, dim)
        q = self.group_queries().to(memory.dtype).unsqueeze(0).expand(memory.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, memory)
        out = torch.einsum("bkd,kdg->bkg", q, self.group_fc.to(q.dtype)).flatten(1)  # (B, K·g) ≥ C
        return out[:, : self.num_classes] + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"groups={self.num_groups}, classes_per_group={self.per_group}, queries={self.queries_from}"
