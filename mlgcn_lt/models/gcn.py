"""The ML-GCN label graph and the GCN that turns label vectors into classifiers.

Adjacency (ML-GCN): conditional probabilities P(L_j | L_i) = M_ij / N_i from the training co-occurrence,
binarised at τ, then re-weighted with p to limit over-smoothing:

- ``form="paper"`` (ML-GCN paper, Eq. 8): A'_ij = p · A_ij / Σ_{k≠i} A_ik for i ≠ j, A'_ii = 1 − p (rows).
- ``form="release"`` (the authors' code): divide by *column* sums, multiply by p, add the identity (diagonal 1),
  and propagate with the transpose: Â = D^-½ Aᵀ D^-½.

Graph convolution: H⁽ˡ⁺¹⁾ = LeakyReLU(Â H⁽ˡ⁾ W⁽ˡ⁾); the last layer has no activation and yields the (C, D)
classifier matrix.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np
import torch
from torch import nn

AdjacencyForm = Literal["paper", "release"]


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def build_adjacency(
    cooccurrence,
    counts,
    threshold: float = 0.4,
    reweight: float = 0.25,
    form: AdjacencyForm = "paper",
) -> torch.Tensor:
    """Re-weighted (C, C) ML-GCN correlation matrix, before normalisation (see module docstring), from the raw
    co-occurrence counts M (``cooccurrence``, (C, C)) and the positives per class N (``counts``, (C,)).

    Classes without positives or without edges get only their self loop; nothing divides by zero.
    """
    co = _as_tensor(cooccurrence).clone()
    n = _as_tensor(counts)
    c = co.shape[0]
    if co.shape != (c, c) or n.shape != (c,):
        raise ValueError(f"cooccurrence must be (C, C) and counts (C,), got {tuple(co.shape)} and {tuple(n.shape)}")
    if not 0.0 <= reweight <= 1.0:
        raise ValueError(f"adjacency re-weighting p must be in [0, 1], got {reweight}")
    co.fill_diagonal_(0.0)
    conditional = torch.where(n[:, None] > 0, co / n.clamp(min=1.0)[:, None], torch.zeros_like(co))  # P(j | i), row i
    binary = (conditional >= threshold).double()
    binary.fill_diagonal_(0.0)
    eye = torch.eye(c, dtype=torch.float64)
    if form == "paper":
        rows = binary.sum(1, keepdim=True)
        off = torch.where(rows > 0, reweight * binary / rows.clamp(min=1.0), torch.zeros_like(binary))
        return (off + (1.0 - reweight) * eye).float()
    if form == "release":
        cols = binary.sum(0, keepdim=True)
        off = reweight * binary / (cols + 1e-6)
        return (off + eye).float()
    raise ValueError(f"unknown adjacency form {form!r}; known: ['paper', 'release']")


def normalize_adjacency(adjacency: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """Symmetric normalisation Â = D^-½ A D^-½ with D = diag(row sums of A) (``transpose``: D^-½ Aᵀ D^-½).

    Rows summing to zero get a zero scale instead of an infinity.
    """
    a = adjacency.double()
    d = a.sum(1)
    inv = torch.where(d > 0, d.clamp(min=1e-12).rsqrt(), torch.zeros_like(d))
    a = a.t() if transpose else a
    return (inv[:, None] * a * inv[None, :]).float()


class GraphConvolution(nn.Module):
    """One graph convolution: Â · (H W) (+ bias)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        bound = 1.0 / math.sqrt(out_features)  # ML-GCN's initialisation
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        out = adjacency @ (h @ self.weight)
        return out if self.bias is None else out + self.bias


class LabelGCN(nn.Module):
    """Stacked GCN: label vectors (C, d) → classifiers (C, D), dims d → hidden[0] → … → D (LeakyReLU between)."""

    def __init__(
        self,
        label_vectors: torch.Tensor,
        adjacency: torch.Tensor,
        out_features: int,
        hidden: tuple[int, ...] | list[int] = (1024,),
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.register_buffer("label_vectors", torch.as_tensor(label_vectors, dtype=torch.float32).clone())
        self.register_buffer("adjacency", torch.as_tensor(adjacency, dtype=torch.float32).clone())
        dims = [self.label_vectors.shape[1], *hidden, out_features]
        self.layers = nn.ModuleList(GraphConvolution(a, b) for a, b in itertools.pairwise(dims))
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self) -> torch.Tensor:
        h = self.label_vectors
        for i, layer in enumerate(self.layers):
            h = layer(h, self.adjacency)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h
