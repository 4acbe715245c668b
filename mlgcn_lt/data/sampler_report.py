"""The paper's Table 5: average positive labels per class among a sampler's draws (Sections 3.2 and 5).

``python -m mlgcn_lt.data.samplers report --csv train.csv --sampler cycle --draws 512 --repeats 50`` reads labels
only (images are never opened); ``--labels-npy`` takes an (N, C) 0/1 array, ``--synthetic N`` draws N label rows
from the synthetic CXR-LT label model (:func:`mlgcn_lt.data.synthetic.labels.sample_labels`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlgcn_lt.config.groups import config_options, option_target
from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES, NIH_CXR14_CLASSES
from mlgcn_lt.data.samplers import positive_labels

#: Table 5 of the paper (CXR-LT, 512 draws): sampler -> (Support Devices, Pneumoperitoneum, ratio).
PAPER_TABLE5: dict[str, tuple[float, float, float]] = {"cycle": (200, 21, 9.52), "least_sampled": (168, 43, 3.90)}


def sampler_label_distribution(
    labels: np.ndarray, sampler: str, draws: int = 512, repeats: int = 50, seed: int = 0, **options
) -> np.ndarray:
    """Average positive labels per class (C,) among ``draws`` draws, over ``repeats`` epochs (Table 5)."""
    known = config_options("data/sampler")
    if sampler not in known:
        raise ValueError(f"unknown sampler {sampler!r}; known: {known}")
    if draws <= 0 or repeats <= 0:
        raise ValueError(f"draws and repeats must be positive, got {draws} and {repeats}")
    s = option_target("data/sampler", sampler)(labels, num_samples=draws, seed=seed, num_replicas=1, rank=0, **options)
    positive = positive_labels(labels)
    total = np.zeros(positive.shape[1])
    for epoch in range(repeats):
        s.set_epoch(epoch)
        total += positive[s.global_indices()].sum(0)
    return total / repeats


def format_report(
    classes: Sequence[str], train_counts: np.ndarray, avg: np.ndarray, draws: int, sampler: str | None = None
) -> str:
    """Per-class table sorted by training frequency, then the most / least sampled ratio (classes with positives)."""
    width = max(len(c) for c in classes)
    lines = [f"{'rank':>4}  {'class':<{width}}  {'train_pos':>9}  {'avg_labels':>10}  {'per_draw':>8}"]
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    for rank, j in enumerate(order, 1):
        lines.append(
            f"{rank:>4}  {classes[j]:<{width}}  {train_counts[j]:>9d}  {avg[j]:>10.1f}  {avg[j] / draws:>8.3f}"
        )
    seen = np.flatnonzero(train_counts > 0)
    hi, lo = seen[np.argmax(avg[seen])], seen[np.argmin(avg[seen])]
    ratio = avg[hi] / avg[lo] if avg[lo] > 0 else float("inf")
    lines.append(f"labels per draw: {avg.sum() / draws:.2f}")
    lines.append(f"most sampled: {classes[hi]} {avg[hi]:.1f}; least sampled: {classes[lo]} {avg[lo]:.1f}")
    lines.append(f"ratio (most / least sampled): {ratio:.2f}")
    head, tail = order[0], seen[np.argmin(train_counts[seen])]
    if head != tail and avg[tail] > 0:
        lines.append(
            f"most / least frequent class in training: {classes[head]} {avg[head]:.1f} / {classes[tail]} "
            f"{avg[tail]:.1f} = {avg[head] / avg[tail]:.2f}"
        )
    if sampler in PAPER_TABLE5:
        a, b, r = PAPER_TABLE5[sampler]
        lines.append(f"paper (Table 5, CXR-LT, 512 draws): Support Devices {a:g} / Pneumoperitoneum {b:g} = {r:.2f}")
    return "\n".join(lines)


def _default_classes(c: int) -> list[str]:
    for known in (CXR_LT_2023_CLASSES, NIH_CXR14_CLASSES):
        if len(known) == c:
            return list(known)
    return [f"class_{j}" for j in range(c)]


def load_labels(args: argparse.Namespace) -> tuple[np.ndarray, list[str], str]:
    """(labels, class names, description) from ``--csv``, ``--labels-npy`` or ``--synthetic``."""
    if args.synthetic is not None:
        from mlgcn_lt.data.synthetic.labels import sample_labels

        labels = sample_labels(args.synthetic, np.random.default_rng([args.seed, 1])).astype(np.float32)
        return labels, list(CXR_LT_2023_CLASSES), f"{args.synthetic} synthetic CXR-LT label rows"
    if args.labels_npy is not None:
        labels = np.load(args.labels_npy).astype(np.float32)
        if labels.ndim != 2:
            raise SystemExit(f"{args.labels_npy}: expected an (N, C) array, got shape {labels.shape}")
        return labels, _default_classes(labels.shape[1]), f"{len(labels)} rows of {args.labels_npy}"
    from mlgcn_lt.data.tables import read_table

    csv = Path(args.csv)
    options: dict = {}
    if args.format in ("cxr_lt", "csv"):
        options["uncertain"] = args.uncertain
    if args.format == "csv":
        if not args.path_column or not args.label_columns:
            raise SystemExit("--format csv needs --path-column and --label-columns")
        options |= {"path_column": args.path_column, "label_columns": args.label_columns.split(",")}
    table = read_table(args.format, csv, args.root or csv.parent, **options)
    return table.labels, list(table.classes), f"{len(table)} rows of {csv}"


def build_parser() -> argparse.ArgumentParser:
    """``report`` subcommand (the only one)."""
    parser = argparse.ArgumentParser(prog="python -m mlgcn_lt.data.samplers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="average labels per class among a sampler's draws (paper Table 5)")
    src = rep.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="label table (read with the project's readers; images are not opened)")
    src.add_argument("--labels-npy", help="an (N, C) 0/1 label array (.npy)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N label rows of the synthetic CXR-LT label model")
    rep.add_argument("--sampler", choices=config_options("data/sampler"), default="cycle")
    rep.add_argument("--draws", type=int, default=512, help="draws per epoch (the paper: 512)")
    rep.add_argument("--repeats", type=int, default=50, help="epochs averaged")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--threshold", type=float, help="repeat_factor threshold (default: the sampler's)")
    rep.add_argument("--format", choices=["cxr_lt", "nih", "csv"], default="cxr_lt", help="table format of --csv")
    rep.add_argument("--root", help="data root for the table's relative paths (default: the CSV's folder)")
    rep.add_argument("--uncertain", choices=["error", "ignore", "zero", "one"], default="error")
    rep.add_argument("--path-column", help="--format csv: the image path column")
    rep.add_argument("--label-columns", help="--format csv: comma-separated label columns")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; prints the report."""
    args = build_parser().parse_args(argv)
    labels, classes, what = load_labels(args)
    options = {"threshold": args.threshold} if args.sampler == "repeat_factor" and args.threshold else {}
    try:
        avg = sampler_label_distribution(labels, args.sampler, args.draws, args.repeats, args.seed, **options)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"sampler: {args.sampler}  draws: {args.draws}  repeats: {args.repeats}  seed: {args.seed}  labels: {what}")
    counts = positive_labels(labels).sum(0).astype(np.int64)
    print(format_report(classes, counts, avg, args.draws, args.sampler))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
