"""LSE pooling (Eq. 5): the formula, its mean / max limits, numerical stability, its gradient."""

from __future__ import annotations

import pytest
import torch

from mlgcn_lt.models.pooling import LSEPool


def test_lse_matches_eq5():
    x = torch.randn(2, 3, 4, 5)
    gamma = 0.5
    ref = (1 / gamma) * torch.log(torch.exp(gamma * x).flatten(2).mean(2))
    torch.testing.assert_close(LSEPool(gamma)(x), ref)


def test_lse_limits_mean_and_max():
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(LSEPool(1e-6)(x), x.flatten(2).mean(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(LSEPool(1e4)(x), x.flatten(2).amax(2), atol=1e-3, rtol=0)


def test_lse_is_stable_for_large_activations_and_gamma():
    x = torch.full((1, 2, 3, 3), 1e4)
    x[0, 0, 0, 0] = 2e4
    for gamma in (0.5, 10.0, 1e3):
        y = LSEPool(gamma)(x)
        assert torch.isfinite(y).all()
    y = LSEPool(1e3)(x)
    assert y[0, 1] == pytest.approx(1e4) and 1e4 < y[0, 0] <= 2e4
    bf16 = LSEPool(0.5)(torch.randn(2, 4, 3, 3).bfloat16() * 100)
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16.float()).all()


def test_lse_gradient_is_softmax_weights():
    x = torch.randn(1, 1, 2, 2, requires_grad=True)
    LSEPool(2.0)(x).sum().backward()
    torch.testing.assert_close(x.grad.flatten(), torch.softmax(2.0 * x.detach().flatten(), 0))
    with pytest.raises(ValueError, match="gamma > 0"):
        LSEPool(0.0)
