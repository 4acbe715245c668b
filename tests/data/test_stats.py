"""Training label statistics: counts, co-occurrence and head / middle / tail groups."""

from __future__ import annotations

import numpy as np
import pytest

from mlgcn_lt.data.stats import LabelStats, group_sizes


def test_counts_and_cooccurrence_ignore_unknown():
    labels = np.array([[1, 1, 0], [1, np.nan, 1], [0, 1, 1], [1, 1, np.nan]], dtype=np.float32)
    s = LabelStats.from_labels(labels, ["a", "b", "c"], head=1, tail=1)
    np.testing.assert_array_equal(s.counts, [3, 3, 2])
    np.testing.assert_array_equal(s.cooccurrence_counts, [[0, 2, 1], [2, 0, 1], [1, 1, 0]])
    assert s.num_images == 4
    assert s.groups == {"a": "head", "b": "middle", "c": "tail"}  # ties keep table order


def test_paper_groups_for_26_classes_and_scaled_otherwise():
    assert group_sizes(26) == (9, 9)
    assert group_sizes(15) == (5, 5)
    assert group_sizes(40) == (14, 14)
    assert group_sizes(1) == (1, 0)
    with pytest.raises(ValueError, match="head=5 \\+ tail=5"):
        group_sizes(8, 5, 5)


def test_groups_follow_frequency_rank():
    rng = np.random.default_rng(0)
    freq = np.linspace(0.9, 0.01, 26)
    labels = (rng.random((3000, 26)) < freq).astype(np.float32)
    s = LabelStats.from_labels(labels, [f"c{i}" for i in range(26)])
    order = np.argsort(-s.counts, kind="stable")
    groups = [s.groups[f"c{j}"] for j in order]
    assert groups == ["head"] * 9 + ["middle"] * 8 + ["tail"] * 9


def test_round_trip_and_empty_class_warning(caplog):
    labels = np.array([[1, 0], [1, 0]], dtype=np.float32)
    s = LabelStats.from_labels(labels, ["x", "never"])
    assert "never" in caplog.text
    back = LabelStats.from_dict(s.to_dict())
    assert back.classes == s.classes and back.groups == s.groups
    np.testing.assert_array_equal(back.cooccurrence_counts, s.cooccurrence_counts)


def test_statistics_saved_under_the_old_key_still_load():
    """``label_stats.json`` and checkpoints' hyper-parameters written before the rename hold ``cooccurrence``."""
    from mlgcn_lt.reporting.plots import conditional_cooccurrence

    labels = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=np.float32)
    s = LabelStats.from_labels(labels, ["a", "b", "c"])
    new = s.to_dict()
    old = {k: v for k, v in new.items() if k != "cooccurrence_counts"} | {"cooccurrence": new["cooccurrence_counts"]}
    assert "cooccurrence" not in new
    back = LabelStats.from_dict(old)
    np.testing.assert_array_equal(back.cooccurrence_counts, [[0, 2, 2], [2, 0, 2], [2, 2, 0]])
    np.testing.assert_array_equal(conditional_cooccurrence(old)[0], conditional_cooccurrence(s)[0])
    with pytest.raises(KeyError, match="without 'cooccurrence_counts'"):
        LabelStats.from_dict({k: v for k, v in new.items() if k != "cooccurrence_counts"})
