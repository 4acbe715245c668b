"""Global pooling: (B, C, H, W) → (B, C). ``max`` (vanilla ML-GCN), ``avg``, ``lse`` (the paper, Eq. 5)."""

from __future__ import annotations

import torch
from torch import nn


class MaxPool(nn.Module):
    """Global max pooling over the spatial positions (vanilla ML-GCN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


class AvgPool(nn.Module):
    """Global average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class LSEPool(nn.Module):
    """Log-sum-exp pooling, Eq. 5: x_p = (1/γ) · log((1/P) · Σ_ij exp(γ · x_ij)), per channel.

    Computed in float32 as ``m + (1/γ) · log1p(mean(expm1(γ (x − m))))`` with ``m`` the channel max: nothing
    overflows for large activations or γ, and nothing cancels for small γ. γ → 0 gives the mean, γ → ∞ the max.
    """

    def __init__(self, gamma: float = 0.5) -> None:
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"LSE pooling needs gamma > 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2).float()
        m = flat.amax(dim=2, keepdim=True).detach()
        lse = torch.log1p(torch.expm1(self.gamma * (flat - m)).mean(dim=2))
        return (m.squeeze(2) + lse / self.gamma).to(x.dtype)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"
