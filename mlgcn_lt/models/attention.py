"""Attention between the pooled image vector and the label classifiers (Section 3.5, Eq. 6).

Interface: ``(image (B, D), classifiers (C, D)) → (image' (B, D), classifiers' (C, D) or (B, C, D))``; every
module is built with ``dim=D`` and the head computes logits as ``u' · W'ᵀ`` (per sample when W' is (B, C, D)).

Three forms of the one shared Transformer encoder layer:

- :class:`LabelSequenceAttention` (``model/attention=mha``, the paper, Figure 4): the C label rows are one
  sequence of C tokens (label-label attention, the same for every image: classifiers stay (C, D)); each pooled
  image vector goes through the same layer as a sequence of one.
- :class:`JointSequenceAttention` (``model/attention=joint``, beyond the paper): one sequence [image, C labels] per
  image, so every classifier depends on the image ((B, C, D)).
- :class:`PerVectorAttention` (``model/attention=release``, the authors' code): every vector alone.
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


class LabelSequenceAttention(nn.Module):
    """The paper's MHA (Sections 3.1, 3.5, Figure 4): one Transformer encoder layer applied to each modality.

    The C classifier rows attend to each other as one sequence of C tokens, computed once per forward (Eq. 6 with
    Q = K = V = the label tokens): every classifier sees the other labels, none sees the image, so classifiers
    stay (C, D). The same layer (shared weights) maps each pooled image vector u as a sequence of one token.
    """

    def __init__(
        self, dim: int, heads: int = 8, feedforward: int = 2048, dropout: float = 0.1, norm_first: bool = False
    ) -> None:
        super().__init__()
        self.layer = _encoder_layer(dim, heads, feedforward, dropout, norm_first)

    def forward(self, image: torch.Tensor, classifiers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if classifiers.dim() != 2:
            raise ValueError(
                f"model/attention=mha attends over one (C, D) set of label tokens, got classifiers of shape "
                f"{tuple(classifiers.shape)}"
            )
        labels = self.layer(classifiers.unsqueeze(0)).squeeze(0)  # one sequence of C label tokens
        return self.layer(image.unsqueeze(1)).squeeze(1), labels  # each image: a sequence of one


class JointSequenceAttention(nn.Module):
    """One Transformer encoder layer over the sequence [image token, C label tokens] (beyond the paper).

    Image and label tokens share the layer's weights; attention mixes image evidence into every label's classifier
    and label context into the image vector, so classifiers become per-sample (B, C, D). This was this project's
    earlier ``mha``; the paper keeps the modalities apart (:class:`LabelSequenceAttention`).
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
