"""Metrics against hand-computed values; NaN targets; classes without positives; loop vs library agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlgcn_lt.evaluation.metrics import MultilabelMetrics, compute_metrics


def test_ap_auc_f1_by_hand():
    probs = np.array([[0.9, 0.2], [0.8, 0.6], [0.3, 0.7], [0.1, 0.4]])
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    m = compute_metrics(probs, targets, ["a", "b"])
    # a: ranking 1,0,1,0 -> AP = (1/1 + 2/3) / 2; AUC: pairs (0.9>0.8, 0.9>0.1, 0.3<0.8, 0.3>0.1) = 3/4
    assert m["AP/a"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["AUC/a"] == pytest.approx(0.75)
    # b: ranking 0.7(1) 0.6(1) 0.4(0) 0.2(0) -> perfect
    assert m["AP/b"] == pytest.approx(1.0) and m["AUC/b"] == pytest.approx(1.0)
    # F1 at 0.5: a predicts rows 0,1 -> tp 1, fp 1, fn 1 -> 0.5; b predicts rows 1,2 -> 1.0
    assert m["F1/a"] == pytest.approx(0.5) and m["F1/b"] == pytest.approx(1.0)
    assert m["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert m["mF1"] == pytest.approx(0.75)
    assert m["n_classes_without_positives"] == 0


def test_nan_targets_are_ignored_per_class():
    probs = np.array([[0.9], [0.8], [0.3], [0.1]])
    full = compute_metrics(probs[[0, 2, 3]], np.array([[1.0], [1.0], [0.0]]), ["a"])
    masked = compute_metrics(probs, np.array([[1.0], [np.nan], [1.0], [0.0]]), ["a"])
    assert masked["AP/a"] == pytest.approx(full["AP/a"]) and masked["AUC/a"] == pytest.approx(full["AUC/a"])


def test_class_without_positives_is_left_out_and_counted():
    probs = np.array([[0.9, 0.9, 0.1], [0.2, 0.1, 0.8]])
    targets = np.array([[1, 0, 1], [0, 0, 1]], dtype=float)
    m = compute_metrics(probs, targets, ["a", "none", "all"], groups={"a": "head", "none": "tail", "all": "middle"})
    assert math.isnan(m["AP/none"]) and m["n_classes_without_positives"] == 1
    assert math.isnan(m["AUC/all"])  # no negatives: no AUC, but AP is defined
    assert m["AP/all"] == pytest.approx(1.0)
    assert m["mAP"] == pytest.approx((1.0 + 1.0) / 2)
    assert m["mAUC"] == pytest.approx(1.0)  # only class a
    assert math.isnan(m["mAP_tail"]) and m["mAP_head"] == 1.0


def test_per_class_thresholds_and_tensor_input():
    probs = torch.tensor([[0.3, 0.3], [0.1, 0.1]])
    targets = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    m = compute_metrics(probs, targets, ["a", "b"], threshold=[0.2, 0.5])
    assert m["F1/a"] == 1.0 and m["F1/b"] == 0.0


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"must both be \(N, 3\)"):
        compute_metrics(np.zeros((4, 2)), np.zeros((4, 2)), ["a", "b", "c"])


def test_loop_metric_agrees_with_library_and_dedups_padding():
    rng = np.random.default_rng(0)
    probs = rng.random((50, 5)).astype(np.float32)
    targets = (rng.random((50, 5)) < 0.3).astype(np.float32)
    targets[rng.random((50, 5)) < 0.1] = np.nan
    names = list("abcde")
    groups = dict(zip(names, ["head", "head", "middle", "tail", "tail"], strict=True))
    metric = MultilabelMetrics(names, groups)
    for start in range(0, 50, 16):
        sl = slice(start, start + 16)
        metric.update(torch.from_numpy(probs[sl]), torch.from_numpy(targets[sl]), torch.arange(50)[sl])
    # padding as a distributed sampler adds it: the first rows again
    metric.update(torch.from_numpy(probs[:3]), torch.from_numpy(targets[:3]), torch.arange(3))
    loop = metric.compute()
    lib = compute_metrics(probs, targets, names, groups)
    assert loop.keys() == lib.keys()
    for k in lib:
        assert (math.isnan(lib[k]) and math.isnan(loop[k])) or loop[k] == pytest.approx(lib[k], abs=1e-6), k
