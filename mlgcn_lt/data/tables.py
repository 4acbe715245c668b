"""Readers that turn a label table (CXR-LT, NIH ChestX-ray14, any CSV) into one :class:`ImageTable`.

Every reader validates what it reads and fails with an error naming the file, row and column at fault:
labels are 1, 0 or blank (NaN = unknown, masked out of loss and metrics); anything else is an error unless a
policy maps it (``uncertain``: CheXpert-style ``-1``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES, CXR_LT_2023_METADATA, NIH_CXR14_CLASSES

log = logging.getLogger(__name__)

TableFormat = Literal["cxr_lt", "nih", "csv"]
UncertainPolicy = Literal["error", "ignore", "zero", "one"]

_UNCERTAIN_VALUE = {"ignore": np.nan, "zero": 0.0, "one": 1.0}


class TableError(ValueError):
    """A label table that cannot be read as asked; the message names file, row and column."""


@dataclass(frozen=True)
class ImageTable:
    """Rows of one split: image paths, class names and an (N, C) label matrix (1 / 0 / NaN)."""

    source: Path
    root: Path
    paths: list[str]
    classes: list[str]
    labels: np.ndarray
    meta: pd.DataFrame = field(repr=False)
    group_column: str | None = None
    #: 1-based line numbers in ``source`` (header = line 1), kept for error messages after subsetting.
    lines: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    #: False for a file without label columns (e.g. the challenge's test file): labels are all NaN, and the split
    #: gets predictions but no metrics.
    has_labels: bool = True

    def __post_init__(self) -> None:
        n = len(self.paths)
        if self.labels.shape != (n, len(self.classes)):
            raise TableError(
                f"{self.source}: labels {self.labels.shape} do not match {n} rows x {len(self.classes)} classes"
            )
        if self.lines is None:
            object.__setattr__(self, "lines", np.arange(2, n + 2))

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, i: int) -> Path:
        """Absolute path of row ``i``'s image."""
        return self.root / self.paths[i]

    def subset(self, index: Sequence[int] | np.ndarray) -> ImageTable:
        """Rows ``index`` as a new table (labels copied, metadata re-indexed)."""
        index = np.asarray(index, dtype=np.int64)
        return ImageTable(
            source=self.source,
            root=self.root,
            paths=[self.paths[i] for i in index],
            classes=list(self.classes),
            labels=self.labels[index].copy(),
            meta=self.meta.iloc[index].reset_index(drop=True),
            group_column=self.group_column,
            lines=self.lines[index],
            has_labels=self.has_labels,
        )

    def groups(self) -> np.ndarray:
        """Patient / subject id per row (the unit of splitting); each row its own group if none is known."""
        if self.group_column is None:
            return np.arange(len(self))
        return self.meta[self.group_column].to_numpy()


# --------------------------------------------------------------------------- parsing helpers


def _read_csv(csv: str | os.PathLike) -> pd.DataFrame:
    path = Path(csv)
    if not path.is_file():
        raise TableError(f"label table not found: {path} (check data.root / data.*_csv)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=False)
    except pd.errors.EmptyDataError as e:
        raise TableError(f"{path}: the file is empty (expected a header row and one row per image)") from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise TableError(f"{path}: not a readable CSV: {e}") from e
    if len(df.columns) == 1:
        _refuse_other_separator(path, str(df.columns[0]))
    _check_field_counts(path, len(df.columns))
    dup = [c for c in df.columns if "." in c and c.rsplit(".", 1)[0] in df.columns and c.rsplit(".", 1)[1].isdigit()]
    if dup:
        raise TableError(f"{path}: duplicated column(s) {[c.rsplit('.', 1)[0] for c in dup]} in the header")
    if len(df) == 0:
        raise TableError(f"{path}: the table has a header but no rows")
    return df


def _refuse_other_separator(path: Path, header: str) -> None:
    """A one-column header holding ``;``, tab or ``|`` is a table written with another separator."""
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
        if sep in header:
            raise TableError(
                f"{path}: the header reads as one column {header!r}: the file is separated by {name}, expected "
                f"commas (columns found when split by {sep!r}: {[c.strip() for c in header.split(sep)]}); "
                "save it as a comma-separated CSV"
            )


def _check_field_counts(path: Path, n_columns: int) -> None:
    """Every row has as many fields as the header (pandas pads a short row with blanks = unknown labels).

    A row cut short (an interrupted copy) would otherwise read as a row of unknown labels. Blank lines are skipped
    as pandas skips them. Without quotes in the file, separators are counted per line (~0.1 s for 377k CXR-LT
    rows); with quotes, the C csv reader parses it (~1 s).
    """
    data = path.read_bytes()
    if b'"' not in data:
        lines = data.split(b"\n")
        want = n_columns - 1
        for i, line in enumerate(lines[1:], start=2):
            if line.count(b",") != want and line.strip():
                _short_row(path, i, line.decode("utf-8", "replace").rstrip("\r").split(","), n_columns)
        return
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)  # the header (pandas already checked it)
        for row in reader:
            if len(row) != n_columns and row:
                _short_row(path, reader.line_num, row, n_columns)


def _short_row(path: Path, line: int, row: list[str], n_columns: int) -> None:
    what = "fewer" if len(row) < n_columns else "more"
    raise TableError(
        f"{path}: line {line}: {len(row)} field(s), {what} than the header's {n_columns} "
        f"(a row cut short, e.g. by an interrupted copy, or a stray separator; the row starts "
        f"{','.join(row[:2])[:80]!r})"
    )


def parse_labels(
    df: pd.DataFrame, columns: Sequence[str], source: Path, uncertain: UncertainPolicy = "error"
) -> np.ndarray:
    """Label columns → float32 (N, C): 1, 0, NaN for blank; ``-1`` mapped by ``uncertain``; else an error."""
    out = np.empty((len(df), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        raw = df[col].astype(str).str.strip()
        blank = raw.eq("") | raw.str.lower().isin(["nan", "na", "null", "none"])
        values = pd.to_numeric(raw.where(~blank), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~blank.to_numpy() & ~np.isin(values, [0.0, 1.0])
        if uncertain != "error":
            minus = values == -1.0
            bad &= ~minus
            values = np.where(minus, _UNCERTAIN_VALUE[uncertain], values)
        if bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(f"line {r + 2}: {df[col].iloc[r]!r}" for r in rows[:5])
            more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
            hint = " (set data.columns.uncertain=ignore|zero|one to map -1)" if (values[rows] == -1).any() else ""
            raise TableError(f"{source}: column {col!r} must hold 1, 0 or blank; found {shown}{more}{hint}")
        out[:, j] = np.where(blank.to_numpy(), np.nan, values)
    return out


def _check_paths(paths: list[str], lines: np.ndarray, root: Path, source: Path, column: str) -> None:
    """Reject empty paths, paths escaping ``root`` and duplicated images."""
    for p, line in zip(paths, lines, strict=True):
        if not p:
            raise TableError(f"{source}: line {line}: empty image path in column {column!r}")
        norm = os.path.normpath(p)
        if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
            raise TableError(
                f"{source}: line {line}: image path {p!r} in column {column!r} escapes data.root ({root}); "
                "paths must be relative to data.root"
            )
    seen: dict[str, int] = {}
    for p, line in zip(paths, lines, strict=True):
        key = os.path.normpath(p)
        if key in seen:
            raise TableError(f"{source}: line {line}: image {p!r} is listed again (first at line {seen[key]})")
        seen[key] = int(line)


def _make_table(
    df: pd.DataFrame,
    *,
    source: Path,
    root: Path,
    path_column: str,
    classes: list[str],
    labels: np.ndarray,
    meta_columns: Sequence[str],
    group_column: str | None,
    has_labels: bool = True,
) -> ImageTable:
    paths = df[path_column].astype(str).str.strip().tolist()
    lines = np.arange(2, len(df) + 2)
    _check_paths(paths, lines, root, source, path_column)
    meta = df[list(meta_columns)].reset_index(drop=True)
    return ImageTable(source, root, paths, classes, labels, meta, group_column, lines, has_labels)


def _unlabelled(n: int, classes: Sequence[str]) -> np.ndarray:
    return np.full((n, len(classes)), np.nan, dtype=np.float32)


# --------------------------------------------------------------------------- the three formats


def read_cxr_lt(
    csv: str | os.PathLike,
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | None = CXR_LT_2023_CLASSES,
    uncertain: UncertainPolicy = "error",
    require_labels: bool = True,
) -> ImageTable:
    """CXR-LT CSV: metadata, then ``path`` or ``fpath``, then label columns (class order from the header).

    ``classes`` is the expected class set (official 2023 list by default; ``None`` accepts any header). A header
    with the expected classes in another order is mapped by name (columns are reordered to ``classes``); a missing
    or unexpected class is an error. ``require_labels=False`` accepts the challenge's unlabelled test file.
    """
    source = Path(csv)
    df = _read_csv(source)
    path_cols = [c for c in ("path", "fpath") if c in df.columns]
    if len(path_cols) != 1:
        what = "neither" if not path_cols else "both"
        raise TableError(
            f"{source}: expected exactly one image path column 'path' or 'fpath', found {what} "
            f"(columns found: {list(df.columns)})"
        )
    path_column = path_cols[0]
    after = list(df.columns[df.columns.get_loc(path_column) + 1 :])
    before = [c for c in df.columns if c not in after and c != path_column]
    header_classes = after
    if not header_classes and require_labels:
        expected = f" (expected {list(classes)})" if classes is not None else ""
        raise TableError(f"{source}: no label columns after {path_column!r}{expected}; labels are needed here")
    if classes is None:
        use = header_classes
    else:
        want = list(classes)
        missing = [c for c in want if c not in header_classes]
        extra = [c for c in header_classes if c not in want]
        if header_classes or require_labels:
            if missing or extra:
                raise TableError(
                    f"{source}: label columns after {path_column!r} do not match the expected classes; "
                    f"missing {missing}, unexpected {extra} (set data.columns.classes to the table's class list)"
                )
            if header_classes != want:
                log.warning("%s: label columns are in a non-official order; mapped by name", source)
        use = want
    labels = parse_labels(df, use, source, uncertain) if header_classes else _unlabelled(len(df), use)
    group = "subject_id" if "subject_id" in df.columns else None
    if not set(CXR_LT_2023_METADATA[:2]).issubset(before):
        log.warning("%s: CXR-LT metadata columns %s not found", source, list(CXR_LT_2023_METADATA[:2]))
    return _make_table(
        df,
        source=source,
        root=Path(root),
        path_column=path_column,
        classes=list(use),
        labels=labels,
        meta_columns=before,
        group_column=group,
        has_labels=bool(header_classes),
    )


def read_nih(
    csv: str | os.PathLike,
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | None = NIH_CXR14_CLASSES,
    image_dir: str = "images",
    require_labels: bool = True,
) -> ImageTable:
    """NIH ``Data_Entry_2017_v2020.csv``: ``Image Index``, ``|``-separated ``Finding Labels``, ``Patient ID``.

    Images are looked up at ``root/image_dir/<Image Index>``. A finding not in ``classes`` is an error.
    ``require_labels=False`` accepts a file without ``Finding Labels`` (a report split without labels).
    """
    source = Path(csv)
    df = _read_csv(source)
    labelled = "Finding Labels" in df.columns
    needed = ("Image Index", "Finding Labels", "Patient ID") if labelled or require_labels else ("Image Index",)
    for col in needed:
        if col not in df.columns:
            raise TableError(f"{source}: missing NIH column {col!r} (have {list(df.columns)})")
    if not labelled:
        if classes is None:
            raise TableError(f"{source}: no 'Finding Labels' column and no data.columns.classes to name the classes")
        df = df.assign(_path=[f"{image_dir}/{p.strip()}" if image_dir else p.strip() for p in df["Image Index"]])
        return _make_table(
            df,
            source=source,
            root=Path(root),
            path_column="_path",
            classes=list(classes),
            labels=_unlabelled(len(df), classes),
            meta_columns=[c for c in df.columns if c != "_path"],
            group_column="Patient ID" if "Patient ID" in df.columns else None,
            has_labels=False,
        )
    cls = (
        list(classes)
        if classes is not None
        else sorted({f.strip() for v in df["Finding Labels"] for f in v.split("|") if f.strip()})
    )
    index = {c: j for j, c in enumerate(cls)}
    labels = np.zeros((len(df), len(cls)), dtype=np.float32)
    for r, value in enumerate(df["Finding Labels"]):
        findings = [f.strip() for f in value.split("|") if f.strip()]
        if not findings:
            raise TableError(f"{source}: line {r + 2}: empty 'Finding Labels' (expected e.g. 'No Finding')")
        for f in findings:
            if f not in index:
                raise TableError(f"{source}: line {r + 2}: unknown finding {f!r} in 'Finding Labels' (known: {cls})")
            labels[r, index[f]] = 1.0
    df = df.assign(_path=[f"{image_dir}/{p.strip()}" if image_dir else p.strip() for p in df["Image Index"]])
    meta = [c for c in df.columns if c != "_path"]
    return _make_table(
        df,
        source=source,
        root=Path(root),
        path_column="_path",
        classes=cls,
        labels=labels,
        meta_columns=meta,
        group_column="Patient ID",
    )


def read_csv_table(
    csv: str | os.PathLike,
    root: str | os.PathLike,
    *,
    path_column: str,
    label_columns: Sequence[str],
    id_columns: Sequence[str] = (),
    group_column: str | None = None,
    uncertain: UncertainPolicy = "error",
    require_labels: bool = True,
) -> ImageTable:
    """Any CSV: one image path column and the label columns named in the config.

    ``require_labels=False`` accepts a file with none of the label columns (a report split without labels).
    """
    source = Path(csv)
    df = _read_csv(source)
    labelled = require_labels or any(c in df.columns for c in label_columns)
    needed = [path_column, *(label_columns if labelled else []), *id_columns]
    needed += [group_column] if group_column and labelled else []
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise TableError(f"{source}: missing column(s) {missing} named in the data config (have {list(df.columns)})")
    if len(set(label_columns)) != len(label_columns):
        raise TableError(f"{source}: data.columns.label_columns lists a class twice: {list(label_columns)}")
    if not label_columns:
        raise TableError(f"{source}: data.columns.label_columns is empty")
    labels = parse_labels(df, label_columns, source, uncertain) if labelled else _unlabelled(len(df), label_columns)
    group_column = group_column if group_column in df.columns else None
    meta = list(dict.fromkeys([*id_columns, *([group_column] if group_column else [])]))
    return _make_table(
        df,
        source=source,
        root=Path(root),
        path_column=path_column,
        classes=list(label_columns),
        labels=labels,
        meta_columns=meta,
        group_column=group_column,
        has_labels=labelled,
    )


def read_table(fmt: TableFormat, csv: str | os.PathLike, root: str | os.PathLike, **options) -> ImageTable:
    """Dispatch to the reader of ``fmt`` (``cxr_lt``, ``nih`` or ``csv``)."""
    readers = {"cxr_lt": read_cxr_lt, "nih": read_nih, "csv": read_csv_table}
    if fmt not in readers:
        raise TableError(f"unknown table format {fmt!r}; known: {sorted(readers)}")
    return readers[fmt](csv, root, **options)


def split_by_group(table: ImageTable, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Row indices of ``len(fractions) + 1`` disjoint parts, never splitting a group (patient).

    Part ``k`` holds about ``fractions[k]`` of the rows (at least one group when the fraction is positive); the
    last part holds the rest. Groups are shuffled by ``seed``.
    """
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"split fractions must be >= 0 and sum to < 1, got {list(fractions)}")
    uniq, inverse = np.unique(table.groups().astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq))[order])
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    row_rank = rank[inverse]
    parts, start = [], 0
    for fraction, target in zip(fractions, np.cumsum(fractions) * len(table), strict=True):
        stop = int(np.searchsorted(bounds, target, side="right"))
        stop = min(max(stop, start + (1 if fraction > 0 else 0)), len(uniq))
        parts.append(np.flatnonzero((row_rank >= start) & (row_rank < stop)))
        start = stop
    parts.append(np.flatnonzero(row_rank >= start))
    return parts
