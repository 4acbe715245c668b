"""Figures: a map over its image, one PNG per finding, and one contact sheet per image (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from mlgcn_lt.explain.pointing import peak
from mlgcn_lt.utils.io import atomic_write

Box = tuple[float, float, float, float]


def _normalise(cam: np.ndarray) -> np.ndarray:
    lo, hi = float(cam.min()), float(cam.max())
    return (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)


def draw(ax, image: np.ndarray, cam: np.ndarray, title: str, boxes: Sequence[Box] = (), alpha: float = 0.45) -> None:
    """The image in grey, the map (min-max scaled) in ``jet`` on top, the boxes in white, its maximum as a cross."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    ax.imshow(_normalise(cam), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    for x, y, w, h in boxes:
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="white", linewidth=1.2))
    r, c = peak(cam)
    ax.plot([c], [r], marker="x", color="white", markersize=6, mew=1.5)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"), mode="wb")
    plt.close(fig)
    return path


def finding_png(path: Path, image: np.ndarray, cam: np.ndarray, cls: str, prob: float, boxes=()) -> Path:
    """One finding's overlay, its probability in the title."""
    fig, ax = plt.subplots(figsize=(3.2, 3.4))
    draw(ax, image, cam, f"{cls}: p = {prob:.3f}", boxes)
    return _save(fig, path)


def contact_sheet(
    path: Path, image: np.ndarray, panels: Sequence[tuple[str, float, np.ndarray, Sequence[Box]]]
) -> Path:
    """The image and every finding's overlay side by side (``panels``: class, probability, map, boxes)."""
    n = len(panels) + 1
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("image", fontsize=8)
    axes[0].axis("off")
    for ax, (cls, prob, cam, boxes) in zip(axes[1:], panels, strict=False):
        draw(ax, image, cam, f"{cls}: p = {prob:.3f}", boxes)
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
