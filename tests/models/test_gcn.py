"""ML-GCN label graph: adjacency forms, normalisation, degenerate classes, the GCN's classifiers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlgcn_lt.models.gcn import LabelGCN, build_adjacency, normalize_adjacency

# 4 classes: 0 and 1 co-occur strongly, 2 is isolated, 3 never occurs.
CO = np.array([[0, 40, 2, 0], [40, 0, 1, 0], [2, 1, 0, 0], [0, 0, 0, 0]])
COUNTS = np.array([50, 80, 30, 0])


def test_paper_form_rows():
    a = build_adjacency(CO, COUNTS, threshold=0.4, reweight=0.25, form="paper")
    # P(1|0) = 0.8 and P(0|1) = 0.5 pass tau; others do not.
    expected = torch.tensor([[0.75, 0.25, 0, 0], [0.25, 0.75, 0, 0], [0, 0, 0.75, 0], [0, 0, 0, 0.75]])
    torch.testing.assert_close(a, expected)


def test_threshold_is_directional():
    a = build_adjacency(CO, COUNTS, threshold=0.6, reweight=0.2, form="paper")
    assert a[0, 1] == pytest.approx(0.2) and a[1, 0] == 0  # P(1|0)=0.8 >= 0.6 > P(0|1)=0.5
    assert a[1, 1] == pytest.approx(0.8)


def test_release_form_columns_and_unit_diagonal():
    a = build_adjacency(CO, COUNTS, threshold=0.6, reweight=0.25, form="release")
    assert torch.allclose(torch.diagonal(a), torch.ones(4))
    off = a - torch.eye(4)
    cols = off.sum(0)
    assert cols[1] == pytest.approx(0.25, abs=1e-5) and cols[0] == 0 and cols[2] == 0


def test_paper_rows_sum_to_one_for_classes_with_edges():
    rng = np.random.default_rng(0)
    pos = rng.random((500, 10)) < np.linspace(0.5, 0.05, 10)
    co = pos.T.astype(int) @ pos.astype(int)
    a = build_adjacency(co, pos.sum(0), threshold=0.2, reweight=0.3)
    off_rows = (a - torch.diag(torch.diagonal(a))).sum(1)
    for r in off_rows:
        assert r == pytest.approx(0.3, abs=1e-5) or r == 0
    torch.testing.assert_close(torch.diagonal(a), torch.full((10,), 0.7))


@pytest.mark.parametrize("form", ["paper", "release"])
@pytest.mark.parametrize("reweight", [0.0, 0.25, 1.0])
def test_no_nan_for_empty_or_isolated_classes(form, reweight):
    a = build_adjacency(CO, COUNTS, reweight=reweight, form=form)
    n = normalize_adjacency(a, transpose=form == "release")
    assert torch.isfinite(a).all() and torch.isfinite(n).all()


def test_normalisation_is_symmetric_scaling():
    a = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    n = normalize_adjacency(a)
    d = a.sum(1).rsqrt()
    torch.testing.assert_close(n, d[:, None] * a * d[None, :])
    torch.testing.assert_close(n, n.t())
    b = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    d = b.sum(1).rsqrt()
    torch.testing.assert_close(normalize_adjacency(b, transpose=True), d[:, None] * b.t() * d[None, :])


def test_gcn_makes_classifiers_with_gradients():
    adj = normalize_adjacency(build_adjacency(CO, COUNTS))
    gcn = LabelGCN(torch.randn(4, 300), adj, out_features=64, hidden=(128,))
    w = gcn()
    assert w.shape == (4, 64) and torch.isfinite(w).all()
    w.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gcn.parameters())
    assert [tuple(layer.weight.shape) for layer in gcn.layers] == [(300, 128), (128, 64)]


def test_graph_propagates_between_connected_labels_only():
    adj = normalize_adjacency(build_adjacency(CO, COUNTS))
    gcn = LabelGCN(torch.eye(4), adj, out_features=8, hidden=())
    vectors = gcn.label_vectors.clone()
    vectors.requires_grad_(True)
    gcn.label_vectors = vectors
    gcn()[0].sum().backward()  # class 0's classifier depends on classes 0 and 1 only
    touched = vectors.grad.abs().sum(1) > 0
    assert touched.tolist() == [True, True, False, False]
