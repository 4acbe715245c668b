"""Attention between the pooled image vector and the label classifiers (Section 3.5, Eq. 6).

Interface: ``(image (B, D), classifiers (C, D)) → (image' (B, D), classifiers' (C, D) or (B, C, D))``; every
module is built with ``dim=D``.
"""

from __future__ import annotations

import torch
from torch import nn


class NoAttention(nn.Module):
    """Vanilla ML-GCN: image vector and classifiers pass through unchanged."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()

    def forward(self, image: torch.Tensor, classifiers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image, classifiers


def _encoder_layer(dim: int, heads: int, feedforward: int, dropout: float, norm_first: bool) -> nn.Module:
    if dim % heads:
        raise ValueError(f"attention: feature dim {dim} is not divisible by model.attention.heads={heads}")
    return nn.TransformerEncoderLayer(
        d_model=dim,
        nhead=heads,
        dim_feedforward=feedforward,
        dropout=dropout,
        batch_first=True,
        norm_first=norm_first,
    )


class JointSequenceAttention(nn.Module):
    """One Transformer encoder layer over the sequence [image token, C label tokens] (the paper, Eq. 6).

    Image and label tokens share the layer's weights (Section 3.5); attention mixes image evidence into every
    label's classifier and label context into the image vector, so classifiers become per-sample (B, C, D).
    """

    def __init__(
        self, dim: int, heads: int = 8, feedforward: int = 2048, dropout: float = 0.1, norm_first: bool = False
    ) -> None:
        super().__init__()
        self.layer = _encoder_layer(dim, heads, feedforward, dropout, norm_first)

    def forward(self, image: torch.Tensor, classifiers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = classifiers.unsqueeze(0).expand(image.shape[0], -1, -1)
        out = self.layer(torch.cat([image.unsqueeze(1), labels], dim=1))
        return out[:, 0], out[:, 1:]


class PerVectorAttention(JointSequenceAttention):
    """The authors' release: the same encoder layer applied to every vector alone (sequence length 1).

    Attention over a single token is the identity on its value projection, so this is a shared MLP with
    LayerNorm and residuals; kept to reproduce the release.
    """

    def forward(self, image: torch.Tensor, classifiers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer(image.unsqueeze(1)).squeeze(1), self.layer(classifiers.unsqueeze(1)).squeeze(1)
