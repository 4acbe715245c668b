"""Localisation boxes: the synthetic generator's ``boxes.csv`` and NIH's ``BBox_List_2017.csv``.

Both become one frame with columns ``image`` (the image's file name), ``class``, ``x``, ``y``, ``w``, ``h`` (pixels
of the stored image, top-left corner) and ``source``. NIH's header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``
(the bracketed name is split by its commas, and rows end in empty fields), so its columns are read by position;
its label ``Infiltrate`` is the ``Infiltration`` of the image labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

BOX_COLUMNS = ("image", "class", "x", "y", "w", "h")
#: File names looked for beside a split's images when no ``--boxes`` file is given.
DEFAULT_FILES = ("boxes.csv", "BBox_List_2017.csv")
#: NIH box labels spelt differently from its image labels.
NIH_ALIASES = {"Infiltrate": "Infiltration"}


class BoxError(ValueError):
    """A box file that cannot be read; the message names the file, line and column."""


def _check(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    for col in ("x", "y", "w", "h"):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() | (values.to_numpy() < 0))
        if bad.size:
            r = int(bad[0])
            raise BoxError(f"{source}: line {r + 2}: column {col!r} = {frame[col].iloc[r]!r} is not a number >= 0")
        frame[col] = values.astype(float)
    if ((frame["w"] <= 0) | (frame["h"] <= 0)).any():
        r = int(np.flatnonzero(((frame["w"] <= 0) | (frame["h"] <= 0)).to_numpy())[0])
        raise BoxError(f"{source}: line {r + 2}: empty box (w = {frame['w'].iloc[r]}, h = {frame['h'].iloc[r]})")
    return frame


def read_nih_boxes(path: str | os.PathLike) -> pd.DataFrame:
    """NIH ``BBox_List_2017.csv``: Image Index, Finding Label and x, y, w, h read by position."""
    source = Path(path)
    raw = pd.read_csv(source, header=None, skiprows=1, dtype=str, keep_default_na=False)
    header = source.open().readline().strip()
    if not header.startswith("Image Index,Finding Label") or raw.shape[1] < 6:
        raise BoxError(
            f"{source}: not NIH's BBox_List_2017.csv (expected a header 'Image Index,Finding Label,Bbox [x,y,w,h]' "
            f"and 6 fields per row, got {header!r} and {raw.shape[1]} fields)"
        )
    frame = raw.iloc[:, :6].copy()
    frame.columns = list(BOX_COLUMNS)
    frame["image"] = frame["image"].str.strip()
    frame["class"] = frame["class"].str.strip().replace(NIH_ALIASES)
    return _check(frame, source).assign(source=str(source))


def read_synthetic_boxes(path: str | os.PathLike) -> pd.DataFrame:
    """The synthetic generator's ``boxes.csv`` (``split, dicom_id, path, class, x, y, w, h``)."""
    source = Path(path)
    raw = pd.read_csv(source, dtype=str, keep_default_na=False)
    missing = [c for c in ("path", "class", "x", "y", "w", "h") if c not in raw.columns]
    if missing:
        raise BoxError(f"{source}: missing column(s) {missing} (have {list(raw.columns)})")
    frame = raw[["path", "class", "x", "y", "w", "h"]].copy()
    frame.columns = list(BOX_COLUMNS)
    frame["image"] = [Path(p).name for p in frame["image"]]
    return _check(frame, source).assign(source=str(source))


def read_boxes(path: str | os.PathLike) -> pd.DataFrame:
    """Either format, told apart by the header."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"box file not found: {source}")
    header = source.open().readline()
    if header.startswith("Image Index"):
        return read_nih_boxes(source)
    return read_synthetic_boxes(source)


def find_boxes(root: str | os.PathLike) -> Path | None:
    """``boxes.csv`` or ``BBox_List_2017.csv`` in ``root`` (a data set's folder), if there is one."""
    for name in DEFAULT_FILES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def boxes_by_image(frame: pd.DataFrame) -> dict[tuple[str, str], list[tuple[float, float, float, float]]]:
    """``{(image file name, class): [(x, y, w, h), ...]}``."""
    out: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for image, cls, x, y, w, h in frame[list(BOX_COLUMNS)].itertuples(index=False):
        out.setdefault((image, cls), []).append((x, y, w, h))
    return out
