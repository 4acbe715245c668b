"""The W&B dashboard spec (--dry-run, no network) lists the panels the issue asks for, with keys the runs log."""

from __future__ import annotations

import json

import wandb_workspaces.reports.v2 as wr
from omegaconf import OmegaConf

from helpers import compose_config
from mlgcn_lt.reporting.dashboard import CHOICE_COLUMNS, build_workspace, main, spec


def _panels(s):
    return [p for sec in s["sections"] for p in sec["panels"]]


def test_dry_run_prints_the_spec_with_every_panel(capsys):
    assert main(["--entity", "me", "--project", "cxr", "--group-by", "experiment_name", "--dry-run"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["entity"], s["project"]) == ("me", "cxr")
    bars = {tuple(p["metrics"]): p for p in _panels(s) if p["type"] == "bar"}
    for metrics in [("test/mAP",), ("val/mAP",), ("test/mAP_head", "test/mAP_middle", "test/mAP_tail")]:
        assert bars[metrics]["groupby"] == "experiment_name"  # one bar (group) per experiment...
        assert (bars[metrics]["aggregate"], bars[metrics]["range"]) == ("mean", "stddev")  # ...mean ± std of seeds
    assert {"type": "table", "title": "test AP per class", "table": "test/per_class_ap"} in _panels(s)
    curves = [p for p in _panels(s) if p["type"] == "line"]
    assert {"train/loss_epoch", "val/mAP"} <= {m for p in curves for m in p["metrics"]}
    assert all(p["x"] == "epoch" for p in curves)
    columns = s["runs"]["columns"]
    for key in ("data.sampler._target_", "model.num_experts", "model.pooling._target_", "model.attention._target_"):
        assert f"config:{key}" in columns
    assert s["runs"]["groupby"] == ["experiment_name"]


def test_workspace_objects_follow_the_spec():
    s = spec("me", "cxr", group_by="seed")
    workspace = build_workspace(s)
    panels = [p for sec in workspace.sections for p in sec.panels]
    assert len(panels) == len(_panels(s))
    bar = next(p for p in panels if isinstance(p, wr.BarPlot))
    assert bar.groupby == wr.Config("seed") and bar.groupby_rangefunc == "stddev"
    assert any(isinstance(p, wr.WeavePanelSummaryTable) for p in panels)
    assert "config:model.pooling._target_" in workspace.runset_settings.pinned_columns


def test_choice_columns_are_keys_of_the_logged_config(tmp_path, hydra_cleanup):
    cfg = compose_config(["+experiment=ablation_lse_mha"], tmp_path / "run")
    for key in CHOICE_COLUMNS:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key
