"""Thresholds files (mlgcn_lt/evaluation/thresholds.py): a file that is not JSON, or not a thresholds file, is named
with what was expected."""

from __future__ import annotations

import pytest


def test_thresholds_file_not_json_is_named(tmp_path):
    from mlgcn_lt.evaluation.thresholds import load_thresholds

    bad = tmp_path / "thresholds.json"
    bad.write_text("classes: [a]\n")
    with pytest.raises(ValueError, match=f"thresholds file {bad} is not JSON"):
        load_thresholds(bad, ["a"])
    bad.write_text("[0.5]")
    with pytest.raises(ValueError, match="expected a JSON object with 'classes' and 'thresholds'"):
        load_thresholds(bad, ["a"])
