"""The end-of-run summary printed to the console: one row per split, where the outputs are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

COLUMNS = ("mAP", "mAUC", "mF1", "mAP_head", "mAP_middle", "mAP_tail")
SPLITS = ("val", "dev", "test")


def summary_table(metrics: Mapping[str, Any], out: str | Path) -> str:
    """A plain-text table of ``<split>/<metric>`` for the val / dev / test splits present, and the run's files.

    ``val`` is the best epoch (what chose the checkpoint); ``dev`` and ``test`` are report-only scores of that
    checkpoint (docs/protocol.md). Splits without metrics (an unlabelled report split) are not listed.
    """
    header = ["split", *(c.replace("mAP_", "") for c in COLUMNS)]
    rows = [
        [split, *(_fmt(metrics.get(f"{split}/{c}")) for c in COLUMNS)]
        for split in SPLITS
        if any(f"{split}/{c}" in metrics for c in COLUMNS)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_row(header, widths), _row(["-" * w for w in widths], widths), *(_row(r, widths) for r in rows)]
    wall = metrics.get("wall_time_s")
    facts = []
    if metrics.get("best_epoch") is not None:
        facts.append(f"best epoch {metrics['best_epoch']} (chosen on val)")
    if wall is not None:
        facts.append(f"{int(wall) // 60} min {int(wall) % 60} s")
    if facts:
        lines.append(", ".join(facts))
    lines.append(f"outputs: {out} (metrics.json, per_class_<split>.csv, predictions_<split>.csv, checkpoints/)")
    return "\n".join(lines)


def _row(values: list[str], widths: list[int]) -> str:
    return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True)))


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f}"
