"""A saved W&B workspace for this project's runs, in one command (``wandb-workspaces``).

    python -m mlgcn_lt.reporting.dashboard --entity E --project P [--group-by experiment_name] [--dry-run]

Sections: test and best-val mAP per experiment (bars: mean ± std over its runs, i.e. seeds), head / middle / tail
mAP side by side per experiment, the per-class AP table (``test/per_class_ap``, logged head → tail by the
``wandb_per_class`` callback), training curves against the epoch, and the runs table grouped by experiment with the
sampler / experts / pooling / attention / head / loss choices pinned as columns. What the runs log: the resolved
config (``mlgcn_lt.training.loggers.factory.log_config``, nested keys such as ``model.pooling._target_``),
``val/*`` and ``test/*`` metrics against ``epoch`` (the summary keeps the best ``val/mAP*``), the group =
``experiment_name``.
``--dry-run`` prints the spec as JSON and touches no network.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

#: Config keys shown as columns of the runs table: what distinguishes the paper's rows.
CHOICE_COLUMNS = (
    "data.sampler._target_",
    "model.num_experts",
    "model.pooling._target_",
    "model.pooling.gamma",
    "model.attention._target_",
    "model.head._target_",
    "model.loss._target_",
    "model.backbone.name",
    "seed",
)
SUMMARY_COLUMNS = ("test/mAP", "val/mAP", "test/mAP_head", "test/mAP_middle", "test/mAP_tail")
CURVES = ("train/loss_epoch", "val/loss", "val/mAP", "val/mAP_tail")


def spec(entity: str, project: str, group_by: str = "experiment_name", name: str | None = None) -> dict[str, Any]:
    """The workspace as plain data: sections of panels, and the runs table's grouping and columns."""

    def bars(title: str, metrics: Sequence[str]) -> dict[str, Any]:
        return {
            "type": "bar",
            "title": title,
            "metrics": list(metrics),
            "groupby": group_by,
            "aggregate": "mean",
            "range": "stddev",
        }

    def curve(metric: str) -> dict[str, Any]:
        return {"type": "line", "title": metric, "metrics": [metric], "x": "epoch", "groupby": group_by}

    return {
        "entity": entity,
        "project": project,
        "name": name or f"mlgcn-lt by {group_by}",
        "sections": [
            {
                "name": "mAP by experiment (mean ± std over seeds)",
                "panels": [bars("test mAP", ["test/mAP"]), bars("val mAP (best epoch)", ["val/mAP"])],
            },
            {
                "name": "head / middle / tail",
                "panels": [
                    bars("test mAP: head / middle / tail", ["test/mAP_head", "test/mAP_middle", "test/mAP_tail"]),
                    bars("val mAP: head / middle / tail", ["val/mAP_head", "val/mAP_middle", "val/mAP_tail"]),
                ],
            },
            {
                "name": "per-class AP (head → tail)",
                "panels": [{"type": "table", "title": "test AP per class", "table": "test/per_class_ap"}],
            },
            {"name": "training curves", "panels": [curve(m) for m in CURVES]},
        ],
        "runs": {
            "groupby": [group_by],
            "columns": [f"config:{k}" for k in CHOICE_COLUMNS] + [f"summary:{k}" for k in SUMMARY_COLUMNS],
        },
    }


def _panel(p: dict[str, Any]) -> Any:
    import wandb_workspaces.reports.v2 as wr

    if p["type"] == "bar":
        return wr.BarPlot(
            title=p["title"],
            metrics=p["metrics"],
            orientation="v",
            groupby=wr.Config(p["groupby"]),
            groupby_aggfunc=p["aggregate"],
            groupby_rangefunc=p["range"],
        )
    if p["type"] == "line":
        return wr.LinePlot(title=p["title"], x=p["x"], y=p["metrics"], groupby=wr.Config(p["groupby"]))
    if p["type"] == "table":
        return wr.WeavePanelSummaryTable(table_name=p["table"])
    raise ValueError(f"unknown panel type {p['type']!r}")


def build_workspace(s: dict[str, Any]) -> Any:
    """The ``wandb_workspaces`` Workspace of a :func:`spec` (built offline; ``.save()`` uploads it)."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    sections = [
        ws.Section(name=sec["name"], panels=[_panel(p) for p in sec["panels"]], is_open=True) for sec in s["sections"]
    ]
    runs = ws.RunsetSettings(
        groupby=[expr.Config(k) for k in s["runs"]["groupby"]], pinned_columns=list(s["runs"]["columns"])
    )
    return ws.Workspace(
        entity=s["entity"],
        project=s["project"],
        name=s["name"],
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis="epoch"),
        runset_settings=runs,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mlgcn_lt.reporting.dashboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--entity", required=True, help="W&B entity (team or user)")
    p.add_argument("--project", required=True, help="W&B project")
    p.add_argument("--group-by", default="experiment_name", help="config key runs are grouped by (rows)")
    p.add_argument("--name", help="workspace name (default: 'mlgcn-lt by <group-by>')")
    p.add_argument("--dry-run", action="store_true", help="print the spec as JSON; no network")
    args = p.parse_args(argv)
    s = spec(args.entity, args.project, args.group_by, args.name)
    workspace = build_workspace(s)  # built in both modes: a dry run also checks the library accepts the spec
    if args.dry_run:
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return 0
    try:
        saved = workspace.save()
    except Exception as e:  # no API key, no network, unknown entity/project...
        print(
            f"error: could not save the workspace to {args.entity}/{args.project}: {type(e).__name__}: {e}",
            file=sys.stderr,
        )
        return 2
    print(f"saved workspace {s['name']!r}: {getattr(saved, 'url', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
