"""Unusable checkpoints (mlgcn_lt/utils/checkpoints.py): one error naming the file and what it is, from every tool
that reads one. The files are the ``bad_checkpoints`` fixture (tests/conftest.py)."""

from __future__ import annotations

import pytest

from helpers import compose_config
from mlgcn_lt.utils.checkpoints import CheckpointError, read_checkpoint


def test_unusable_checkpoints_are_named_with_what_they_are(bad_checkpoints):
    for name, (path, expected) in bad_checkpoints.items():
        with pytest.raises(CheckpointError, match=expected) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert str(path) in message, name
        assert "weights_only" not in message, name  # never the advice to disable safe loading
    for name in ("state_dict", "authors"):
        with pytest.raises(CheckpointError, match="python -m mlgcn_lt.import_release"):
            read_checkpoint(bad_checkpoints[name][0])
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(bad_checkpoints["random"][0].parent)


def test_every_tool_reports_the_bad_checkpoint_by_name(bad_checkpoints, tmp_path, hydra_cleanup):
    from mlgcn_lt.evaluation.evaluate import evaluate
    from mlgcn_lt.evaluation.predict import load_checkpoint
    from mlgcn_lt.reporting.runs import Run
    from mlgcn_lt.training.decoupled import read_stage1

    for path, expected in bad_checkpoints.values():
        with pytest.raises(CheckpointError, match=expected):
            load_checkpoint(path)  # eval.py, submit, report's figures
        with pytest.raises(CheckpointError, match=f"model.decoupled.init_from {path}.*{expected}"):
            read_stage1(path, classes=["a"], num_experts=1, backbone="resnet18")  # cRT stage 2
    path, expected = bad_checkpoints["truncated"]
    cfg = compose_config([f"ckpt_path={path}", "data.root=/nonexistent"], tmp_path / "eval", config_name="eval")
    with pytest.raises(CheckpointError, match=f"ckpt_path {path} is truncated"):
        evaluate(cfg)  # named before any data is read (data.root does not exist)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(path.read_bytes())
    assert Run.load(run).label_stats is None  # report: no statistics from a truncated checkpoint, no traceback
