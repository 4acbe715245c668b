"""Ablation table (the paper's Table 2) and figures from run directories.

Usage::

    python -m mlgcn_lt.report RUN_DIR_OR_GLOB... [--out DIR] [--split test|dev|val|dev,test] [--metrics mAP,...]
        [--figures]
    python -m mlgcn_lt.report --sampler-figure SOURCE [--samplers random,cycle,least_sampled] [--draws 512] --out DIR

Arguments are run directories, multirun sweep directories (searched recursively: a directory holding
``config.yaml`` or ``.hydra/`` is a run), files in a run directory (its run), or globs of these (quote them:
``'outputs/**/multiruns/*'``). Runs are grouped by ``experiment_name``; each row shows the mean ± sample std over its
runs (seeds) of the chosen ``<split>/<metric>``, the number of runs with metrics and without, and the mean wall time.
Splits (docs/protocol.md): ``val`` (best epoch; it chose the checkpoint), ``dev`` and ``test`` (report-only splits
scored with that checkpoint); the report names where each comes from (``splits`` of ``metrics.json``). Several
splits (``--split dev,test``) give one column per split and metric, headed ``<split>/<metric>``.
Rows: the paper's rows in paper order, then the others alphabetically. ``report.md`` and ``report.csv`` (which also
holds the seeds and, per metric, the number of runs where it is defined) go to ``--out`` (default: the argument if
there is exactly one and it is a directory, else the current directory); the Markdown is also printed. Runs without
``metrics.json`` (crashed, or still running) or whose ``metrics.json`` says they trained 0 optimizer steps
(``trained_steps``) are listed with the tail of their log, and not counted in the table. ``n/a``: the metric is null
(undefined, e.g. a class group without positives) in every run; ``(k/n)``: defined in only k of the n runs. Runs of
one experiment whose configs differ (beyond seeds and paths) are aggregated anyway, and named under "Notes".

``--figures`` writes into ``<out>/figures/``, per experiment: per-class AP (mean over its runs), the training label
distribution and the column-normalised co-occurrence (from the first run's ``label_stats.json``, else from its
checkpoint), the per-expert classifier norms (from the best checkpoint of its first run that has one); and per-class
AP side by side for sampler_random vs sampler_cycle and for ablation_mlgcn vs ablation_lse_mha when present.

``--sampler-figure SOURCE`` writes ``<out>/figures/sampler_distribution.png`` (the paper's Table 5): the average
positive labels per class among ``--draws`` draws of each sampler, from training labels: ``synthetic:N`` (N rows of
the synthetic CXR-LT label model), an ``.npy`` (N, C) 0/1 array, or a CXR-LT-format CSV (labels only are read).
It can be given with or without runs.

A search directory (``hparams_search=optuna``, holding ``optuna.db``) also gets its trials ranked and the best
parameters as a ready override line (:mod:`mlgcn_lt.reporting.search`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlgcn_lt.reporting.runs import Run, collect_runs
from mlgcn_lt.reporting.search import search_report
from mlgcn_lt.utils.io import atomic_write

__all__ = ["Run", "collect_runs", "main", "render", "summarize", "to_markdown", "write_report"]

DEFAULT_METRICS = ("mAP", "mAUC", "mF1", "mAP_head", "mAP_middle", "mAP_tail")

#: The paper's rows (Tables 1, 2, 4) in paper order, then our release-faithful variant; other experiments follow.
PAPER_ORDER = (
    "ablation_mlgcn",
    "ablation_2experts",
    "ablation_4experts_cycle",
    "ablation_ride",
    "ablation_ride_individual",  # beyond the paper: RIDE's own recipe, next to the paper's RIDE row
    "ablation_lse",
    "ablation_mha",
    "ablation_lse_mha",
    "sampler_random",
    "sampler_cycle",
    "sampler_least_sampled",
    "release_faithful",
)

#: Pairs drawn side by side in per-class AP figures when both experiments are present.
COMPARISONS = (("sampler_random", "sampler_cycle"), ("ablation_mlgcn", "ablation_lse_mha"))


# ---------------------------------------------------------------------------------------------------- table
def experiment_order(names: Iterable[str]) -> list[str]:
    """The paper's rows in paper order, then the others alphabetically."""
    names = set(names)
    return [n for n in PAPER_ORDER if n in names] + sorted(names - set(PAPER_ORDER))


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by experiment, experiments in :func:`experiment_order`."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.experiment, []).append(r)
    return {name: groups[name] for name in experiment_order(groups)}


def _mean_std(values: np.ndarray) -> tuple[float, float, int]:
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def split_list(split: str | Sequence[str]) -> list[str]:
    """``"dev,test"`` or ``["dev", "test"]`` → ``["dev", "test"]``."""
    items = split.split(",") if isinstance(split, str) else list(split)
    return [s.strip() for s in items if s.strip()]


def metric_keys(split: str | Sequence[str], metrics: Sequence[str]) -> list[tuple[str, str]]:
    """(column name, ``metrics.json`` key) per metric: ``mAP`` for one split, ``<split>/mAP`` for several."""
    splits = split_list(split)
    if len(splits) == 1:
        return [(m, f"{splits[0]}/{m}") for m in metrics]
    return [(f"{s}/{m}", f"{s}/{m}") for s in splits for m in metrics]


def summarize(
    runs: Sequence[Run], split: str | Sequence[str] = "test", metrics: Sequence[str] = DEFAULT_METRICS
) -> pd.DataFrame:
    """One row per experiment: runs, failed, seeds, ``<m>_mean`` / ``<m>_std`` (sample) / ``<m>_n``, wall minutes.

    With several splits (``"dev,test"``) the metric columns are ``<split>/<m>_mean`` etc.
    """
    keys = metric_keys(split, metrics)
    rows = []
    for name, group in group_runs(runs).items():
        done = [r for r in group if r.ok]
        row: dict[str, Any] = {
            "experiment": name,
            "runs": len(done),
            "failed": len(group) - len(done),
            "seeds": " ".join(str(r.seed) for r in done),
        }
        for m, key in keys:
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_n"] = _mean_std(
                np.array([r.value(key) for r in done], dtype=float)
            )
        wall = _mean_std(np.array([r.value("wall_time_s") for r in done], dtype=float))[0]
        row["wall_time_min"] = wall / 60.0
        rows.append(row)
    columns = ["experiment", "runs", "failed", "seeds"]
    columns += [f"{m}_{s}" for m, _ in keys for s in ("mean", "std", "n")] + ["wall_time_min"]
    return pd.DataFrame(rows, columns=columns)


def _cell(mean: float, std: float, n: int, runs: int, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if not math.isnan(std) else "")
    return text + (f" ({n}/{runs})" if n < runs else "")


def metric_names(df: pd.DataFrame) -> list[str]:
    """The metrics of a :func:`summarize` table, in column order."""
    return [c[: -len("_mean")] for c in df.columns if c.endswith("_mean")]


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A Markdown table of :func:`summarize`'s output: mean ± std per metric, runs (+ failed), wall time."""
    metrics = metric_names(df)
    header = ["experiment", "runs", *metrics, "wall time (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in df.to_dict("records"):
        runs = f"{r['runs']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")
        cells = [str(r["experiment"]).replace("|", "\\|"), runs]
        cells += [_cell(r[f"{m}_mean"], r[f"{m}_std"], int(r[f"{m}_n"]), r["runs"], digits) for m in metrics]
        cells.append("n/a" if math.isnan(r["wall_time_min"]) else f"{r['wall_time_min']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- report text
def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(d, sort_keys=True, default=str)}


def config_differences(group: Sequence[Run]) -> list[str]:
    """Config keys whose values differ between runs of one experiment (seeds, paths and run dirs aside)."""
    flat = []
    for r in group:
        dirs = (str(r.path), str(r.path.resolve()))
        flat.append(
            {
                k: v
                for k, v in _flatten(r.config).items()
                if not k.endswith("seed") and not k.startswith(("paths.", "hydra.")) and not any(d in v for d in dirs)
            }
        )
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if len({f.get(k) for f in flat}) > 1]


def failed_section(runs: Sequence[Run], now: float | None = None) -> list[str]:
    """Markdown list of the runs without metrics, each with its reason, overrides and log tail."""
    now = time.time() if now is None else now
    lines = []
    for r in runs:
        if r.ok:
            continue
        age = (now - r.last_modified()) / 60.0
        lines.append(f"- `{r.path}` ({r.experiment}, seed {r.seed}): {r.error}; last written {age:.0f} min ago")
        if r.overrides:
            lines.append(f"  - overrides: `{' '.join(r.overrides)}`")
        tail = r.log_tail()
        lines += ["", "  ```", *[f"  {t}" for t in tail.splitlines()], "  ```"] if tail else ["  - no log file"]
    return lines


#: What each split is for, when a run does not say where it comes from (``splits`` in its metrics.json).
SPLIT_ROLES = {
    "val": "best epoch on the validation split (it chose the checkpoint, stopped early, tuned thresholds)",
    "dev": "report-only split, scored once with the chosen checkpoint",
    "test": "report-only split, scored once with the chosen checkpoint",
}


def split_sources(runs: Sequence[Run], split: str | Sequence[str]) -> list[str]:
    """One line per split: what it is for and where its numbers come from (as the runs' metrics.json say)."""
    lines = []
    for s in split_list(split):
        origins = sorted(
            {
                str(r.metrics["splits"][s]).split(", ", 1)[-1]  # without the image count
                for r in runs
                if r.ok and isinstance(r.metrics.get("splits"), dict) and s in r.metrics["splits"]
            }
        )
        where = f" Source: {'; '.join(origins)}." if origins else ""
        lines.append(f"- `{s}`: {SPLIT_ROLES.get(s, 'split')}.{where}")
    return lines


def render(
    runs: Sequence[Run],
    df: pd.DataFrame,
    split: str | Sequence[str] = "test",
    digits: int = 3,
    figures: Sequence[str] = (),
) -> str:
    """The whole ``report.md``: table, splits and their sources, legend, runs without metrics, notes, figures."""
    n_ok = sum(r.ok for r in runs)
    splits = split_list(split)
    lines = [
        f"# Results ({', '.join(splits)} split{'s' if len(splits) > 1 else ''})",
        "",
        *split_sources(runs, splits),
        "",
        f"{len(runs)} runs ({n_ok} with metrics), {len(df)} experiments. "
        "Mean ± sample std over runs (seeds); n/a: undefined; (k/n): defined in k of n runs.",
        "",
        to_markdown(df, digits),
    ]
    failed = failed_section(runs)
    if failed:
        lines += ["", f"## Runs without metrics ({len(runs) - n_ok})", "", *failed]
    notes = [
        f"- {name}: runs differ in {', '.join(f'`{k}`' for k in diff[:8])}{' ...' if len(diff) > 8 else ''} "
        "(aggregated anyway)"
        for name, group in group_runs(runs).items()
        if (diff := config_differences(group))
    ]
    if notes:
        lines += ["", "## Notes", "", *notes]
    if figures:
        lines += ["", "## Figures", "", *figures]
    return "\n".join(lines) + "\n"


def write_report(text: str, df: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.csv`` in ``out``, each written atomically."""
    md = atomic_write(out / "report.md", lambda f: f.write(text))
    csv = atomic_write(out / "report.csv", lambda f: df.to_csv(f, index=False))
    return md, csv


# ---------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlgcn_lt.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="*", help="run dirs, multirun sweep dirs, or globs")
    parser.add_argument("--out", type=Path, help="output dir (default: the single dir argument, else .)")
    parser.add_argument(
        "--split",
        default="test",
        type=_splits_arg,
        help="test | dev | val, or several comma-separated (dev,test): which split's numbers (docs/protocol.md)",
    )
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metric names")
    parser.add_argument("--digits", type=int, default=3, help="decimals in the Markdown table")
    parser.add_argument("--figures", action="store_true", help="also write figures into <out>/figures/")
    sampler = parser.add_argument_group("sampler figure (the paper's Table 5)")
    sampler.add_argument("--sampler-figure", metavar="SOURCE", help="synthetic:N, labels.npy, or a CXR-LT CSV")
    sampler.add_argument("--samplers", default="random,cycle,least_sampled", help="comma-separated sampler names")
    sampler.add_argument("--draws", type=int, default=512)
    sampler.add_argument("--repeats", type=int, default=50)
    sampler.add_argument("--seed", type=int, default=0)
    return parser


def _splits_arg(value: str) -> str:
    splits = split_list(value)
    unknown = [s for s in splits if s not in SPLIT_ROLES]
    if not splits or unknown:
        raise argparse.ArgumentTypeError(f"{value!r}: expected test, dev, val or a comma-separated list of them")
    return ",".join(splits)


def _default_out(paths: Sequence[str]) -> Path:
    return Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else Path.cwd()


def _check_metrics(runs: Sequence[Run], split: str, metrics: Sequence[str]) -> None:
    keys = set().union(*(r.metrics.keys() for r in runs if r.ok)) if any(r.ok for r in runs) else set()
    for s in split_list(split):
        if keys and not any(k.startswith(f"{s}/") for k in keys):
            raise SystemExit(
                f"error: no run's metrics.json has {s}/* metrics (no {s} split, or its file has no labels: "
                "predictions only); see docs/protocol.md"
            )
        unknown = [m for m in metrics if keys and f"{s}/{m}" not in keys]
        if unknown:
            known = sorted(k.split("/", 1)[1] for k in keys if k.startswith(f"{s}/") and k.count("/") == 1)
            raise SystemExit(f"error: metric(s) {unknown} in no run's metrics.json under {s}/; known: {known}")


def _sampler_figure(args: argparse.Namespace, out: Path) -> str:
    """Write the sampler figure; its Markdown image line."""
    from mlgcn_lt.reporting.figures import sampler_figure

    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    path = sampler_figure(args.sampler_figure, samplers, out / "figures", args.draws, args.repeats, args.seed)
    return f"![sampler distribution]({path.relative_to(out).as_posix()})"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: writes report.md / report.csv (and figures), prints the Markdown."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.paths and not args.sampler_figure:
        parser.error("give run directories / globs, or --sampler-figure")
    out = args.out or _default_out(args.paths)
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        print(
            f"error: --out {out} must be a directory (report.md and report.csv go into it); {blocking} is a file",
            file=sys.stderr,
        )
        return 2
    try:
        runs = collect_runs(args.paths)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.paths and not runs:
        print(f"error: no run directory (with config.yaml or .hydra/) under {args.paths}", file=sys.stderr)
        return 2
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    _check_metrics(runs, args.split, metrics)
    figures: list[str] = []
    if args.sampler_figure:
        try:
            figures.append(_sampler_figure(args, out))
        except (ValueError, FileNotFoundError) as e:
            print(f"error: --sampler-figure {args.sampler_figure}: {e}", file=sys.stderr)
            return 2
        if not runs:
            print(f"wrote {out / 'figures' / 'sampler_distribution.png'}")
            return 0
    df = summarize(runs, args.split, metrics)
    if args.figures:
        from mlgcn_lt.reporting.figures import write_figures

        figures += write_figures(group_runs(runs), out, split_list(args.split)[0], COMPARISONS)
    text = render(runs, df, args.split, args.digits, figures) + search_report(args.paths)
    write_report(text, df, out)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
