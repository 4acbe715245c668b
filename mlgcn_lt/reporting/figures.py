"""The figures of ``python -m mlgcn_lt.report --figures`` (per experiment) and of ``--sampler-figure`` (Table 5)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlgcn_lt.reporting import plots
from mlgcn_lt.reporting.runs import Run

log = logging.getLogger(__name__)


def slug(name: str) -> str:
    """A file-name-safe form of an experiment name."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "unnamed"


def _image(path: Path, out: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(out).as_posix()})"


def first_stats(group: Sequence[Run]) -> dict[str, Any] | None:
    """Label statistics of the first run (runs with metrics first) that has them."""
    for r in sorted(group, key=lambda r: not r.ok):
        if r.label_stats is not None:
            return r.label_stats
    return None


def _norms_figure(name: str, group: Sequence[Run], fig_dir: Path, out: Path) -> str:
    """Figure 5 from the best checkpoint of the experiment's first run that has one, or a note why not."""
    run = next((r for r in group if r.ok and r.checkpoint() is not None), None)
    if run is None:
        return f"- {name}: no checkpoint, no expert-norm figure"
    ckpt = run.checkpoint()
    try:
        norms, stats = plots.checkpoint_norms(ckpt)
    except Exception as e:  # a head without classifiers, or a checkpoint that does not load: say so, go on
        return f"- {name}: no expert-norm figure from `{ckpt}`: {type(e).__name__}: {e}"
    path = plots.plot_expert_norms(
        norms,
        stats,
        path=fig_dir / f"expert_norms_{slug(name)}.png",
        title=f"Per-expert classifier norms per class: {name} ({ckpt.name})",
    )
    return _image(path, out, f"expert norms: {name}")


def experiment_figures(name: str, group: Sequence[Run], out: Path, split: str = "test") -> list[str]:
    """Per-class AP (mean over runs), label distribution, co-occurrence, expert norms; Markdown lines."""
    fig_dir = out / "figures"
    lines = [f"### {name}", ""]
    done = [r for r in group if r.ok]
    stats = first_stats(group)
    if stats is None:
        lines.append(f"- {name}: no label_stats.json nor checkpoint statistics: no per-class or label figures")
    else:
        s = slug(name)
        if done:
            path = plots.plot_per_class_ap(
                [[r.metrics for r in done]], stats, labels=[name], split=split, path=fig_dir / f"per_class_ap_{s}.png"
            )
            lines.append(_image(path, out, f"per-class AP: {name}"))
        path = plots.plot_label_distribution(
            stats, path=fig_dir / f"label_distribution_{s}.png", title=f"Training label distribution ({name})"
        )
        lines.append(_image(path, out, f"label distribution: {name}"))
        path = plots.plot_cooccurrence(stats, path=fig_dir / f"cooccurrence_{s}.png")
        lines.append(_image(path, out, f"co-occurrence: {name}"))
    lines += [_norms_figure(name, group, fig_dir, out), ""]
    return lines


def comparison_figures(
    groups: Mapping[str, Sequence[Run]], out: Path, split: str = "test", pairs: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """Per-class AP side by side for each pair of experiments present with metrics."""
    lines = []
    for a, b in pairs:
        runs_a = [r for r in groups.get(a, []) if r.ok]
        runs_b = [r for r in groups.get(b, []) if r.ok]
        stats = first_stats(runs_a + runs_b)
        if not runs_a or not runs_b or stats is None:
            continue
        path = plots.plot_per_class_ap(
            [[r.metrics for r in runs_a], [r.metrics for r in runs_b]],
            stats,
            labels=[a, b],
            split=split,
            path=out / "figures" / f"per_class_ap_{slug(a)}_vs_{slug(b)}.png",
        )
        lines.append(_image(path, out, f"per-class AP: {a} vs {b}"))
    return ["### Comparisons", "", *lines, ""] if lines else []


def write_figures(
    groups: Mapping[str, Sequence[Run]], out: Path, split: str = "test", pairs: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """Every figure of runs grouped by experiment into ``out/figures``; Markdown lines embedding them (and notes)."""
    lines = comparison_figures(groups, out, split, pairs)
    for name, group in groups.items():
        log.info("figures of %s", name)
        lines += experiment_figures(name, group, out, split)
    return lines


# ---------------------------------------------------------------------------------------------------- Table 5
def load_training_labels(source: str, seed: int = 0) -> tuple[Any, list[str], str]:
    """(labels, classes, description) from ``synthetic:N``, an ``.npy`` array, or a CXR-LT CSV (labels only)."""
    from mlgcn_lt.data.sampler_report import build_parser, load_labels

    if source == "synthetic" or source.startswith("synthetic:"):
        argv = ["--synthetic", source.partition(":")[2] or "5000"]
    elif source.endswith(".npy"):
        argv = ["--labels-npy", source]
    else:
        argv = ["--csv", source]
    return load_labels(build_parser().parse_args(["report", *argv, "--seed", str(seed)]))


def sampler_figure(
    source: str, samplers: Sequence[str], fig_dir: Path, draws: int = 512, repeats: int = 50, seed: int = 0
) -> Path:
    """The paper's Table 5 as a figure: average positive labels per class in ``draws`` draws, per sampler."""
    from mlgcn_lt.data.sampler_report import sampler_label_distribution
    from mlgcn_lt.data.stats import LabelStats

    labels, classes, what = load_training_labels(source, seed)
    stats = LabelStats.from_labels(labels, classes)
    dists = {s: sampler_label_distribution(labels, s, draws, repeats, seed) for s in samplers}
    return plots.plot_sampler_distribution(
        dists,
        stats,
        draws=draws,
        path=fig_dir / "sampler_distribution.png",
        title=f"Labels per class among {draws} sampled images, mean of {repeats} epochs ({what}; paper Table 5)",
    )
