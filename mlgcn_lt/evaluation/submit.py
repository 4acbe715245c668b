"""CXR-LT submission writer: checkpoint(s) + the challenge's test CSV → one probability row per input row.

    python -m mlgcn_lt.submit --ckpt run1/checkpoints/best.ckpt [--ckpt run2/...] \\
        --csv cxr-lt-2023/test.csv --root /data/mimic-cxr-jpg/2.0.0 --out submission.csv [--tta hflip]

Several checkpoints are averaged (probabilities). The output holds the input's id column(s) and the 26 classes in
the official order, one row per input row in the same order; it is checked against the input before it is
written (atomically).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES
from mlgcn_lt.data.tables import ImageTable, read_table
from mlgcn_lt.evaluation.outputs import write_csv
from mlgcn_lt.evaluation.predict import (
    CheckpointMismatch,
    fuse_table_predictions,
    image_size_of,
    load_checkpoint,
    predict_table,
)
from mlgcn_lt.training.guards import BACKBONE_STRIDE
from mlgcn_lt.utils.checkpoints import CheckpointError

log = logging.getLogger(__name__)


class SubmissionError(ValueError):
    """A submission that does not match its input; nothing is written."""


def submission_frame(
    table: ImageTable, probs: np.ndarray, id_columns: Sequence[str], classes: Sequence[str] = CXR_LT_2023_CLASSES
) -> pd.DataFrame:
    """Id columns + one probability column per class of ``classes`` (mapped by name from the table's order)."""
    missing = [c for c in classes if c not in table.classes]
    if missing:
        raise SubmissionError(f"the model has no output for classes {missing}")
    order = [table.classes.index(c) for c in classes]
    frame = table.meta[list(id_columns)].reset_index(drop=True).copy()
    for j, c in zip(order, classes, strict=True):
        frame[c] = probs[:, j]
    return frame


def check_submission(
    frame: pd.DataFrame, source: pd.DataFrame, id_columns: Sequence[str], classes: Sequence[str] = CXR_LT_2023_CLASSES
) -> None:
    """Same rows, same order, same ids as the input; the classes in order; probabilities finite in [0, 1]."""
    if len(frame) != len(source):
        raise SubmissionError(f"{len(frame)} rows for {len(source)} input rows")
    if list(frame.columns) != [*id_columns, *classes]:
        raise SubmissionError(f"columns {list(frame.columns)} are not the id columns + classes in official order")
    for col in id_columns:
        if not (frame[col].astype(str).to_numpy() == source[col].astype(str).str.strip().to_numpy()).all():
            raise SubmissionError(f"column {col!r} does not reproduce the input's rows in order")
    values = frame[list(classes)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise SubmissionError(f"row {r}: {classes[c]} = {values[r, c]} is not a probability")


def check_output_path(out: str | Path, inputs: Sequence[str | Path]) -> Path:
    """Refuse an output that would overwrite an input, is a directory, or lies under a regular file."""
    out = Path(out)
    resolved = out.resolve()
    for given in inputs:
        if Path(given).exists() and Path(given).resolve() == resolved:
            raise SubmissionError(f"--out {out} is the input file {given}: refusing to overwrite it")
    if out.is_dir():
        raise SubmissionError(f"--out {out} is a directory: give a file name, e.g. {out / 'submission.csv'}")
    for parent in resolved.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SubmissionError(f"--out {out}: {parent} is a file, not a directory")
            break
    return out


def id_columns_of(table: ImageTable, csv: str | Path, id_columns: Sequence[str] | None) -> list[str]:
    """The id columns to keep: the given ones (each must exist), else ``dicom_id``, else the first ``*_id``."""
    columns = list(table.meta.columns)
    if id_columns:
        unknown = [c for c in id_columns if c not in columns]
        if unknown:
            raise SubmissionError(f"{csv}: --id-column {unknown} not found; the columns are {columns}")
        return list(id_columns)
    ids = ["dicom_id"] if "dicom_id" in columns else [c for c in columns if c.endswith("_id")][:1]
    if not ids:
        raise SubmissionError(f"{csv}: no id column found; pass --id-column (the columns are {columns})")
    return ids


def check_images_exist(table: ImageTable) -> None:
    """Every image of the table is a file, checked before any inference; all missing ones are named."""
    if not table.root.is_dir():
        raise FileNotFoundError(f"--root {table.root} is not a directory (the CSV's image paths are relative to it)")
    missing = [(int(line), str(table.image_path(i))) for i, line in enumerate(table.lines)]
    missing = [(line, p) for line, p in missing if not Path(p).is_file()]
    if missing:
        listed = "\n  ".join(f"line {line}: {p}" for line, p in missing)
        raise FileNotFoundError(f"{table.source}: {len(missing)} of {len(table)} images not found:\n  {listed}")


def inference_size(models: Sequence, checkpoints: Sequence[str | Path], image_size: int | None) -> int:
    """``image_size`` when given (one warning if a model was trained at another size), else the trained size."""
    trained = {str(p): image_size_of(m, image_size) for p, m in zip(checkpoints, models, strict=True)}
    if image_size is not None:
        if image_size < BACKBONE_STRIDE or image_size % BACKBONE_STRIDE:
            raise SubmissionError(f"--image-size {image_size}: must be a positive multiple of {BACKBONE_STRIDE}")
        other = {p: s for p, s in trained.items() if s != image_size}
        if other:
            log.warning("--image-size %d: the model(s) were trained at another size %s", image_size, other)
        return int(image_size)
    sizes = sorted(set(trained.values()))
    if len(sizes) > 1:
        raise CheckpointMismatch(f"checkpoints were trained at different image sizes {trained}: pass --image-size")
    return sizes[0]


def write_submission(
    checkpoints: Sequence[str | Path],
    csv: str | Path,
    root: str | Path,
    out: str | Path,
    *,
    fmt: str = "cxr_lt",
    id_columns: Sequence[str] | None = None,
    tta: Sequence[str] = (),
    fusion: str | None = None,
    image_size: int | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
) -> pd.DataFrame:
    """Predict ``csv`` with the average of ``checkpoints`` and write the checked submission to ``out``."""
    out = check_output_path(out, [csv, *checkpoints])
    options = {"require_labels": False} if fmt == "cxr_lt" else {}
    table = read_table(fmt, csv, root, **options)
    ids = id_columns_of(table, csv, id_columns)
    check_images_exist(table)
    models = []
    for k, p in enumerate(checkpoints, start=1):
        try:
            models.append(load_checkpoint(p, table.classes))
        except (CheckpointError, CheckpointMismatch, FileNotFoundError) as e:
            where = f"--ckpt #{k} of {len(checkpoints)}: " if len(checkpoints) > 1 else ""
            raise type(e)(f"{where}{e}") from None
    size = inference_size(models, checkpoints, image_size)
    probs = predict_table(models, table, size, tta=tta, batch_size=batch_size, num_workers=num_workers)
    if fusion:
        probs = fuse_table_predictions(table, probs, fusion)
    frame = save_submission(table, probs, out, fmt=fmt, id_columns=ids)
    log.info("wrote %s: %d rows, %d checkpoint(s), tta=%s", out, len(frame), len(models), list(tta))
    return frame


def save_submission(
    table: ImageTable,
    probs: np.ndarray,
    out: str | Path,
    *,
    fmt: str = "cxr_lt",
    id_columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Write the checked submission of ``probs`` (one row per row of ``table``, in order) for ``table.source``.

    Id columns: ``id_columns``, else ``dicom_id``, else the first ``*_id`` column; the classes in the official
    CXR-LT order (``fmt=cxr_lt``), else the table's.
    """
    csv = table.source
    ids = id_columns_of(table, csv, id_columns)
    classes = CXR_LT_2023_CLASSES if fmt == "cxr_lt" else tuple(table.classes)
    frame = submission_frame(table, probs, ids, classes)
    source = pd.read_csv(csv, dtype=str, keep_default_na=False)
    check_submission(frame, source, ids, classes)
    write_csv(Path(out), frame)
    return frame


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlgcn_lt.submit", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", action="append", required=True, help="checkpoint (repeat to average several)")
    parser.add_argument("--csv", required=True, help="the challenge's test CSV (no labels needed)")
    parser.add_argument("--root", required=True, help="folder the CSV's image paths are relative to")
    parser.add_argument("--out", required=True, help="submission CSV to write")
    parser.add_argument("--format", default="cxr_lt", choices=["cxr_lt", "nih"], dest="fmt")
    parser.add_argument("--id-column", action="append", dest="id_columns", help="id column(s) to keep")
    parser.add_argument("--tta", action="append", default=[], help="hflip and/or scale:<factor> (repeatable)")
    parser.add_argument("--fusion", choices=["mean", "max", "view_weighted"], help="study-level fusion")
    parser.add_argument(
        "--image-size",
        type=int,
        help="input size (overrides the trained size, with a warning); default: the size the checkpoint was trained at",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_submission(
            args.ckpt,
            args.csv,
            args.root,
            args.out,
            fmt=args.fmt,
            id_columns=args.id_columns,
            tta=args.tta,
            fusion=args.fusion,
            image_size=args.image_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
    except (SubmissionError, CheckpointMismatch, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
