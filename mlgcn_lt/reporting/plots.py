"""The paper's figures from run outputs: per-class AP, label distribution, co-occurrence, expert norms, samplers.

Every function draws on a fresh :class:`matplotlib.figure.Figure` (rendered by Agg, no pyplot, no global backend
switch), orders classes by training frequency (head → tail), colours them by group, and writes a PNG atomically to
the keyword-only ``path``, which it returns.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mlgcn_lt.data.stats import LabelStats
from mlgcn_lt.evaluation.metrics import GROUPS
from mlgcn_lt.utils.io import atomic_write

GROUP_COLORS: dict[str, str] = {"head": "#1f77b4", "middle": "#ff7f0e", "tail": "#2ca02c"}
SERIES_HATCHES = ("", "//", "..", "xx", "\\\\")
#: Samplers and experts: colours distinct from the group colours (which the tick labels keep).
SERIES_COLORS = ("#444444", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
DPI = 120

StatsLike = LabelStats | Mapping[str, Any]


# ---------------------------------------------------------------------------------------------------- helpers
def as_stats(stats: StatsLike) -> LabelStats:
    """A LabelStats from itself or from its ``to_dict()`` form (``label_stats.json``)."""
    return stats if isinstance(stats, LabelStats) else LabelStats.from_dict(dict(stats))


def class_order(stats: StatsLike) -> np.ndarray:
    """Class indices by training count, most frequent first (ties: table order), i.e. head → tail."""
    return np.argsort(-np.asarray(as_stats(stats).counts), kind="stable")


def _figure(num_classes: int, per_class: float = 0.32, height: float = 5.5) -> tuple[Figure, Any]:
    fig = Figure(figsize=(max(8.0, 2.5 + per_class * num_classes), height))
    return fig, fig.add_subplot()


def _class_ticks(ax: Any, names: Sequence[str], groups: Sequence[str], axis: str = "x") -> None:
    """Class names as rotated tick labels, coloured by group."""
    ticks = np.arange(len(names))
    if axis == "x":
        ax.set_xticks(ticks, list(names), rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
        labels = ax.get_xticklabels()
        ax.set_xlim(-0.6, len(names) - 0.4)
    else:
        ax.set_yticks(ticks, list(names), fontsize=8)
        labels = ax.get_yticklabels()
    for label, group in zip(labels, groups, strict=True):
        label.set_color(GROUP_COLORS.get(group, "black"))


def _group_separators(ax: Any, groups: Sequence[str]) -> None:
    """Dotted lines between head / middle / tail (contiguous in frequency order)."""
    for x in range(1, len(groups)):
        if groups[x] != groups[x - 1]:
            ax.axvline(x - 0.5, color="grey", linestyle=":", linewidth=1)


def _group_handles(groups: Sequence[str]) -> list[Patch]:
    present = [g for g in GROUPS if g in set(groups)]
    return [Patch(facecolor=GROUP_COLORS[g], label=g) for g in present]


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write the PNG atomically, the axes' title also as PNG ``Title`` metadata (searchable, checked by tests)."""
    fig.tight_layout()
    meta = {"Title": fig.axes[0].get_title()}
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, metadata=meta), mode="wb")


def _ordered(stats: StatsLike) -> tuple[LabelStats, np.ndarray, list[str], list[str]]:
    s = as_stats(stats)
    order = class_order(s)
    names = [s.classes[j] for j in order]
    return s, order, names, [s.groups.get(c, "") for c in names]


# ---------------------------------------------------------------------------------------------------- Figure: AP
def _metrics_of(item: Any) -> Mapping[str, Any]:
    metrics = getattr(item, "metrics", item)
    if not isinstance(metrics, Mapping):
        raise TypeError(f"expected a metrics mapping or a run with .metrics, got {type(item).__name__}")
    return metrics


def _series(runs_or_metrics: Any) -> list[list[Mapping[str, Any]]]:
    """Normalise to series (bars side by side), each a list of runs' metrics (averaged: seeds)."""
    if isinstance(runs_or_metrics, Mapping) or hasattr(runs_or_metrics, "metrics"):
        runs_or_metrics = [runs_or_metrics]
    series = []
    for item in runs_or_metrics:
        seeds = item if isinstance(item, Sequence) and not isinstance(item, str | Mapping) else [item]
        if not seeds:
            raise ValueError("plot_per_class_ap: a series without any run")
        series.append([_metrics_of(m) for m in seeds])
    return series


def _value(metrics: Mapping[str, Any], key: str) -> float:
    v = metrics.get(key)
    return float(v) if v is not None else math.nan


def per_class_values(
    metrics: Sequence[Mapping[str, Any]], classes: Sequence[str], split: str = "test", kind: str = "AP"
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over runs of ``<split>/<kind>/<class>`` (NaN where undefined; std NaN for one run)."""
    values = np.array([[_value(m, f"{split}/{kind}/{c}") for c in classes] for m in metrics], dtype=float)
    n = (~np.isnan(values)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(values, 0) / np.maximum(n, 1), np.nan)
        sq = np.nansum((values - mean) ** 2, 0)
        std = np.where(n > 1, np.sqrt(sq / np.maximum(n - 1, 1)), np.nan)
    return mean, std


def _group_means(values: np.ndarray, groups: Sequence[str]) -> str:
    parts = []
    for g in GROUPS:
        v = values[[i for i, x in enumerate(groups) if x == g]]
        v = v[~np.isnan(v)]
        parts.append(f"{g} {v.mean():.3f}" if len(v) else f"{g} n/a")
    return ", ".join(parts)


def plot_per_class_ap(
    runs_or_metrics: Any,
    stats: StatsLike,
    labels: Sequence[str] | None = None,
    split: str = "test",
    *,
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Per-class AP bars coloured by group, head → tail (the paper's Table 1 as a figure).

    ``runs_or_metrics``: one run (a ``metrics.json`` dict or an object with ``.metrics``), or a list of series
    drawn side by side, each a run or a list of runs (seeds: bars show the mean, error bars the sample std).
    """
    series = _series(runs_or_metrics)
    labels = list(labels) if labels is not None else [f"run {k + 1}" for k in range(len(series))]
    if len(labels) != len(series):
        raise ValueError(f"plot_per_class_ap: {len(labels)} labels for {len(series)} series")
    _, _, names, groups = _ordered(stats)
    fig, ax = _figure(len(names), per_class=0.22 + 0.12 * len(series))
    width = 0.8 / len(series)
    x = np.arange(len(names))
    colors = [GROUP_COLORS.get(g, "grey") for g in groups]
    handles = _group_handles(groups)
    summaries = []
    for k, (runs, label) in enumerate(zip(series, labels, strict=True)):
        mean, std = per_class_values(runs, names, split)
        xs = x + (k - (len(series) - 1) / 2) * width
        hatch = SERIES_HATCHES[k % len(SERIES_HATCHES)]
        alpha = 1.0 if k == 0 else 0.6
        yerr = np.nan_to_num(std) if len(runs) > 1 else None
        ax.bar(xs, np.nan_to_num(mean), width, color=colors, hatch=hatch, alpha=alpha, edgecolor="black", lw=0.4)
        if yerr is not None:
            ax.errorbar(xs, np.nan_to_num(mean), yerr=yerr, fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        for xi in xs[np.isnan(mean)]:
            ax.text(xi, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
        seeds = f", {len(runs)} runs" if len(runs) > 1 else ""
        summaries.append(f"{label}{seeds}: mAP {_group_means(mean, groups)}")
        if len(series) > 1:
            handles.append(Patch(facecolor="white", edgecolor="black", hatch=hatch, label=f"{label}{seeds}"))
    _group_separators(ax, groups)
    _class_ticks(ax, names, groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{split} AP")
    ax.set_xlabel("class (by training frequency, head → tail)")
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    head = title or f"Per-class {split} AP" + (f": {' vs '.join(labels)}" if len(series) > 1 else f": {labels[0]}")
    ax.set_title(head + "\n" + "\n".join(summaries), fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------- Figures 1, 2b
def plot_label_distribution(
    stats: StatsLike, *, path: str | os.PathLike, log: bool = True, title: str | None = None
) -> Path:
    """Training positives per class, sorted, coloured by group (the paper's Figure 1)."""
    s, order, names, groups = _ordered(stats)
    counts = np.asarray(s.counts)[order]
    fig, ax = _figure(len(names))
    colors = [GROUP_COLORS.get(g, "grey") for g in groups]
    ax.bar(np.arange(len(names)), counts, color=colors, edgecolor="black", lw=0.4)
    for x, c in enumerate(counts):
        ax.text(x, c, f"{c:d}", ha="center", va="bottom", fontsize=6, rotation=90 if len(names) > 12 else 0)
    if log and counts.max() > 0:
        ax.set_yscale("log")
        ax.set_ylim(0.8, counts.max() * 3)
    _group_separators(ax, groups)
    _class_ticks(ax, names, groups)
    ax.set_ylabel("training images with the label" + (" (log scale)" if log else ""))
    ax.set_xlabel("class (head → tail)")
    ax.legend(handles=_group_handles(groups), fontsize=8)
    ratio = f", most / least frequent = {counts[0] / counts[-1]:.0f}×" if counts[-1] > 0 else ""
    sub = f"{s.num_images} images, {len(names)} classes{ratio}"
    ax.set_title(f"{title or 'Training label distribution'}\n{sub}", fontsize=10)
    return _save(fig, path)


def conditional_cooccurrence(stats: StatsLike) -> tuple[np.ndarray, list[str], list[str]]:
    """Co-occurrence normalised by column, head → tail: entry (i, j) = co(i, j) / count(j) = P(i | j); NaN on the
    diagonal."""
    s, order, names, groups = _ordered(stats)
    co = np.asarray(s.cooccurrence_counts, dtype=float)[np.ix_(order, order)]
    counts = np.asarray(s.counts, dtype=float)[order]
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(counts[None, :] > 0, co / counts[None, :], np.nan)
    np.fill_diagonal(m, np.nan)
    return m, names, groups


def plot_cooccurrence(stats: StatsLike, *, path: str | os.PathLike, title: str | None = None) -> Path:
    """Heatmap of :func:`conditional_cooccurrence` with a colour bar (the paper's Figure 2b)."""
    m, names, groups = conditional_cooccurrence(stats)
    side = max(7.0, 2.5 + 0.28 * len(names))
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    colormap = mpl.colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=colormap, vmin=0.0, vmax=1.0, interpolation="nearest")
    _class_ticks(ax, names, groups, axis="y")
    ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    for label, group in zip(ax.get_xticklabels(), groups, strict=True):
        label.set_color(GROUP_COLORS.get(group, "black"))
    ax.set_xlabel("class j (column; head → tail)")
    ax.set_ylabel("class i (row; head → tail)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="co(i, j) / count(j)")
    ax.set_title(
        title
        or "Label co-occurrence, column-normalised: co(i, j) / count(j)\n"
        "share of the images positive for j that are also positive for i (grey: diagonal / no positives)",
        fontsize=10,
    )
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------- Figure 5
def classifier_norms(model: Any) -> np.ndarray:
    """(E, C) L2 norms of each expert's per-class classifier rows (``expert.head.classifiers()``, (C, D))."""
    import torch

    net = getattr(model, "net", model)
    experts = getattr(net, "experts", None)
    if experts is None:
        raise TypeError(f"{type(model).__name__} has no .experts (expected an MLGCNModule or a MultiExpertNet)")
    missing = [type(e.head).__name__ for e in experts if not hasattr(e.head, "classifiers")]
    if missing:
        raise ValueError(f"expert heads {sorted(set(missing))} have no classifiers() (only GCN heads do)")
    with torch.no_grad():
        return np.stack([e.head.classifiers().float().norm(dim=1).cpu().numpy() for e in experts])


def checkpoint_norms(path: str | os.PathLike) -> tuple[np.ndarray, LabelStats]:
    """Classifier norms and training label statistics of a Lightning checkpoint (the model rebuilt on CPU)."""
    from mlgcn_lt.evaluation.predict import load_checkpoint

    module = load_checkpoint(path)
    return classifier_norms(module), module.stats


def plot_expert_norms(
    norms: np.ndarray, stats: StatsLike, *, path: str | os.PathLike, title: str | None = None
) -> Path:
    """One line per expert: the L2 norm of each class's classifier, classes head → tail (the paper's Figure 5)."""
    norms = np.atleast_2d(np.asarray(norms, dtype=float))
    s, order, names, groups = _ordered(stats)
    if norms.shape[1] != s.num_classes:
        raise ValueError(f"norms have {norms.shape[1]} classes, the label statistics {s.num_classes}")
    fig, ax = _figure(len(names))
    x = np.arange(len(names))
    for e, row in enumerate(norms[:, order]):
        color = SERIES_COLORS[e % len(SERIES_COLORS)]
        ax.plot(x, row, marker="o", markersize=3.5, linewidth=1.2, color=color, label=f"expert {e + 1}")
    _group_separators(ax, groups)
    _class_ticks(ax, names, groups)
    ax.set_ylabel("L2 norm of the class's GCN classifier")
    ax.set_xlabel("class (by training frequency, head → tail)")
    ax.legend(fontsize=8, ncol=min(4, len(norms)))
    spread = norms.std(0).mean() / max(norms.mean(), 1e-12) if len(norms) > 1 else 0.0
    sub = f"{len(norms)} expert{'s' if len(norms) > 1 else ''}" + (
        f", spread across experts (mean std / mean norm) = {spread:.3f}" if len(norms) > 1 else ""
    )
    ax.set_title((title or "Per-expert classifier norms per class") + f"\n{sub}", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------- Table 5
def plot_sampler_distribution(
    distributions: Mapping[str, np.ndarray],
    stats: StatsLike,
    *,
    draws: int,
    path: str | os.PathLike,
    log: bool = False,
    title: str | None = None,
) -> Path:
    """Average positive labels per class in ``draws`` draws, one bar per sampler (the paper's Table 5)."""
    s, order, names, groups = _ordered(stats)
    fig, ax = _figure(len(names), per_class=0.22 + 0.1 * len(distributions))
    width = 0.8 / max(1, len(distributions))
    x = np.arange(len(names))
    seen = np.asarray(s.counts)[order] > 0
    for k, (name, avg) in enumerate(distributions.items()):
        avg = np.asarray(avg, dtype=float)[order]
        lo = avg[seen].min() if seen.any() else 0.0
        ratio = f"max / min {avg[seen].max() / lo:.1f}×" if lo > 0 else "max / min ∞"
        label = f"{name} ({avg.sum() / draws:.2f} labels per draw, {ratio})"
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        ax.bar(x + (k - (len(distributions) - 1) / 2) * width, avg, width, color=color, label=label, lw=0.3)
    if log:
        ax.set_yscale("log")
    _group_separators(ax, groups)
    _class_ticks(ax, names, groups)
    ax.set_ylabel(f"average positive labels in {draws} draws" + (" (log scale)" if log else ""))
    ax.set_xlabel("class (by training frequency, head → tail; tick colour = group)")
    ax.legend(fontsize=8)
    ax.set_title(title or f"Labels per class among {draws} sampled images, by sampler (paper Table 5)")
    return _save(fig, path)
