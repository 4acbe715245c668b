"""Image validation: open every image of a table once, in parallel, and name every file that cannot be used.

    python -m mlgcn_lt.data.validate data=cxr_lt data.root=/data/mimic-cxr-jpg [--full] [--workers 8]

``header`` mode (the check run at setup) opens each file and reads its header: missing, empty, not-an-image and
decompression-bomb files are found in well under a millisecond per image. ``full`` mode decodes every image (what a
training epoch does), which also finds truncated files; run it once on a new dataset.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from PIL import Image
from tqdm import tqdm

from mlgcn_lt.data.images import ImageDecodeError, load_grayscale
from mlgcn_lt.data.tables import ImageTable

log = logging.getLogger(__name__)

Mode = Literal["none", "header", "full"]
BAD_IMAGES_FILE = "bad_images.csv"


class BadImagesError(ValueError):
    """Images that cannot be read, found before training; the message names every file (or the list's file)."""


@dataclass(frozen=True)
class BadImage:
    """A row whose image cannot be used: the table, its line, the file and why."""

    source: str
    line: int
    path: str
    reason: str


def check_image(path: str, mode: Mode = "header") -> str | None:
    """Why ``path`` cannot be used (``None`` if it can): header read, or full decode in ``full`` mode."""
    try:
        if mode == "full":
            load_grayscale(path, None)
            return None
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            w, h = img.size
            if w < 1 or h < 1:
                return f"empty image {w}x{h}"
            if Image.MAX_IMAGE_PIXELS and w * h > 2 * Image.MAX_IMAGE_PIXELS:
                return f"{w}x{h} pixels exceeds the decompression bomb limit ({2 * Image.MAX_IMAGE_PIXELS} pixels)"
    except FileNotFoundError:
        return "file not found"
    except ImageDecodeError as e:
        return str(e.__cause__ or e).split(": ", 1)[-1]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _check_chunk(args: tuple[list[str], Mode]) -> list[str | None]:
    paths, mode = args
    return [check_image(p, mode) for p in paths]


def find_bad_images(
    table: ImageTable, mode: Mode = "header", workers: int = 0, progress: bool = True, chunk: int = 256
) -> list[BadImage]:
    """Every row of ``table`` whose image fails :func:`check_image` (in parallel over ``workers`` processes)."""
    if mode == "none" or len(table) == 0:
        return []
    paths = [str(table.image_path(i)) for i in range(len(table))]
    chunks = [(paths[i : i + chunk], mode) for i in range(0, len(paths), chunk)]
    bar = tqdm(
        total=len(paths),
        desc=f"checking images ({mode})",
        unit="img",
        leave=False,
        disable=not progress or len(paths) < 1000,
    )
    reasons: list[str | None] = []
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(_check_chunk, chunks):
                reasons += part
                bar.update(len(part))
    else:
        for c in chunks:
            part = _check_chunk(c)
            reasons += part
            bar.update(len(part))
    bar.close()
    return [
        BadImage(str(table.source), int(table.lines[i]), paths[i], r) for i, r in enumerate(reasons) if r is not None
    ]


def check_root(root: str | Path, n_images: int) -> None:
    """One error for a missing ``data.root``, rather than one "file not found" per image."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise BadImagesError(
            f"data.root {root} {what}: every image path of the tables is relative to it ({n_images} training "
            "images); set data.root to the folder holding the images"
        )


def describe(bad: Sequence[BadImage], limit: int = 20) -> str:
    """A readable list of bad images (the first ``limit``, then a count)."""
    lines = [f"  {b.source}:{b.line}: {b.path}: {b.reason}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


def write_bad_images(path: str | Path, bad: Sequence[BadImage]) -> Path:
    """The list as CSV (source, line, path, reason), written atomically."""
    from mlgcn_lt.utils.io import atomic_write

    frame = pd.DataFrame([b.__dict__ for b in bad], columns=["source", "line", "path", "reason"])
    return atomic_write(path, lambda f: frame.to_csv(f, index=False))


def default_out(log_dir: str | Path) -> Path:
    """Where the CLI writes its list without ``--out``: a new ``<paths.log_dir>/validate/<date>_<time>/``."""
    from datetime import datetime

    return Path(log_dir) / "validate" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f") / BAD_IMAGES_FILE


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: compose a data config like train.py, check every image of every split, print and save the bad ones."""
    parser = argparse.ArgumentParser(prog="python -m mlgcn_lt.data.validate", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py (e.g. data=cxr_lt)")
    parser.add_argument("--full", action="store_true", help="decode every image (finds truncated files)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--out",
        type=Path,
        help=f"CSV listing the bad images, or a folder to hold {BAD_IMAGES_FILE} "
        "(default: a new folder <paths.log_dir>/validate/<date>_<time>/, never the current directory)",
    )
    args = parser.parse_args(argv)
    from mlgcn_lt.data.datamodule import build_datamodule
    from mlgcn_lt.data.preprocess import compose_train

    cfg = compose_train([*args.overrides, "data.bad_images.check=none"])
    out = args.out if args.out is not None else default_out(cfg.paths.log_dir)
    if out.is_dir():
        out = out / BAD_IMAGES_FILE
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    check_root(datamodule.root, len(datamodule.tables["train"]))  # also when data.cache_dir is set
    bad = []
    for split, table in datamodule.tables.items():
        found = find_bad_images(table, "full" if args.full else "header", args.workers)
        print(f"{split}: {len(table)} images, {len(found)} bad")
        bad += found
    write_bad_images(out, bad)
    if bad:
        print(f"{len(bad)} bad image(s), listed in {out}:\n{describe(bad)}", file=sys.stderr)
        return 1
    print(f"all images readable; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
