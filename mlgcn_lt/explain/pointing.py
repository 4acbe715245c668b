"""The pointing game (Zhang et al., ECCV 2016): does a map's maximum fall inside the finding's box?

Per positive image and finding with a box: a hit when the argmax of the map lies in any of its boxes; chance is the
fraction of the image the boxes cover (a uniformly random point's hit rate). Reported per class and overall
(pooled over image-finding pairs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlgcn_lt.utils.io import write_json

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Pointing:
    """One image-finding pair: hit or not, and the chance of a hit."""

    cls: str
    hit: bool
    chance: float


def box_mask(shape: tuple[int, int], boxes: Iterable[Box]) -> np.ndarray:
    """Pixels (row, col) whose centre lies in any box (x, y, w, h), in the map's own pixel grid."""
    h, w = shape
    rows, cols = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x, y, bw, bh in boxes:
        mask |= (cols >= x) & (cols <= x + bw) & (rows >= y) & (rows <= y + bh)
    return mask


def peak(cam: np.ndarray) -> tuple[int, int]:
    """(row, col) of the map's maximum; a tied plateau counts at its centroid.

    An upsampled coarse map (a 2×2 feature map at 64 px) holds its maximum on a whole block that reaches the image
    border; ``argmax`` would pick the block's first pixel, a corner of the image, whatever the model attends to.
    """
    top = float(cam.max())
    rows, cols = np.nonzero(cam >= top - 1e-6 * max(1.0, abs(top)))
    return int(np.rint(rows.mean())), int(np.rint(cols.mean()))


def point(cam: np.ndarray, boxes: Sequence[Box], cls: str) -> Pointing:
    """Score one map against its boxes (both in the map's pixels)."""
    mask = box_mask(cam.shape, boxes)
    r, c = peak(cam)
    return Pointing(cls, bool(mask[r, c]), float(mask.mean()))


def scale_boxes(boxes: Sequence[Box], from_size: tuple[int, int], to_size: tuple[int, int]) -> list[Box]:
    """Boxes in an image of (width, height) ``from_size`` moved to one of ``to_size`` (a plain resize)."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return [(x * sx, y * sy, w * sx, h * sy) for x, y, w, h in boxes]


def summarize(results: Sequence[Pointing], classes: Sequence[str] = ()) -> dict:
    """``{"overall": {"hit_rate", "chance", "n"}, "per_class": {class: {...}}}`` (classes in ``classes`` order)."""

    def stats(rs: Sequence[Pointing]) -> dict[str, float | int | None]:
        if not rs:
            return {"hit_rate": None, "chance": None, "n": 0}
        return {
            "hit_rate": float(np.mean([r.hit for r in rs])),
            "chance": float(np.mean([r.chance for r in rs])),
            "n": len(rs),
        }

    names = [c for c in classes if any(r.cls == c for r in results)]
    names += sorted({r.cls for r in results} - set(names))
    return {"overall": stats(results), "per_class": {c: stats([r for r in results if r.cls == c]) for c in names}}


def to_table(summary: Mapping) -> str:
    """The summary as a Markdown table (classes, then the overall row)."""

    def cell(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = ["| class | n | hit rate | chance |", "|---|---:|---:|---:|"]
    rows = [*summary["per_class"].items(), ("**overall**", summary["overall"])]
    lines += [f"| {c} | {s['n']} | {cell(s['hit_rate'])} | {cell(s['chance'])} |" for c, s in rows]
    return "\n".join(lines)


def write_summary(out_dir: str | Path, summary: Mapping) -> Path:
    """``pointing_game.json`` under ``out_dir`` (atomic)."""
    return write_json(Path(out_dir) / "pointing_game.json", dict(summary))
