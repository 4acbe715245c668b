"""Atomic writes (mlgcn_lt/utils/io.py): an interrupted write leaves the previous file, and no temporary one."""

from __future__ import annotations

import json

import pytest


def test_metrics_json_is_written_atomically(tmp_path, monkeypatch):
    from mlgcn_lt.utils import io

    io.write_json(tmp_path / "metrics.json", {"a": 1})

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.write_json(tmp_path / "metrics.json", {"a": 2})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
