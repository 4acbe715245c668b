"""Class activation maps per finding for a checkpoint, as overlays, and the pointing game against boxes.

    python -m mlgcn_lt.explain --ckpt RUN/checkpoints/best.ckpt --split test --limit 8 --out explain/
    python -m mlgcn_lt.explain --ckpt best.ckpt img1.jpg img2.png --classes Nodule,Mass --method gradcam --out x/
    python -m mlgcn_lt.explain --ckpt best.ckpt --split test --pointing-game --out explain/

Images: paths, a CSV (``--csv`` with ``--root`` and ``--format``), or ``--split`` of the training run's data config
(``config.yaml`` two levels above the checkpoint, or ``--config``); ``--limit N`` keeps the first N. For each image,
``<out>/<image>/<k>_<class>.png`` per finding (the top ``--top-k`` by probability, or ``--classes``) with the
probability in the title, and ``<out>/<image>/sheet.png`` with all of them. ``--pointing-game`` scores every
positive image-finding pair that has a box (``boxes.csv`` of the synthetic data, NIH's ``BBox_List_2017.csv``, found
beside the split's images, or ``--boxes``): table printed, ``<out>/pointing_game.json`` written; overlays then only
for the first ``--overlays`` images (default 8).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlgcn_lt.data.images import ImageDecodeError, build_transform, load_grayscale
from mlgcn_lt.data.tables import ImageTable, TableError, read_table
from mlgcn_lt.evaluation.predict import CheckpointMismatch, image_size_of, load_checkpoint
from mlgcn_lt.explain.boxes import BoxError, boxes_by_image, find_boxes, read_boxes
from mlgcn_lt.explain.cams import METHODS, class_maps
from mlgcn_lt.explain.overlay import contact_sheet, finding_png
from mlgcn_lt.explain.pointing import Pointing, point, scale_boxes, summarize, to_table, write_summary
from mlgcn_lt.training.module import MLGCNModule

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One image to explain: a name for its files, its path, and its labels in the model's class order (or None)."""

    name: str
    path: Path
    labels: np.ndarray | None = None


def check_checkpoint(path: str | Path) -> None:
    """Refuse, naming the file, anything that is not a checkpoint of this project's model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointMismatch(f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    keys = list(ckpt.get("state_dict", {})) if isinstance(ckpt, dict) else []
    if not isinstance(hparams, dict) or not {"stats", "backbone", "head"} <= set(hparams):
        raise CheckpointMismatch(
            f"{path}: not a checkpoint of an mlgcn_lt model (MLGCNModule): no hyper_parameters with "
            f"stats / backbone / head (have {sorted(hparams) if isinstance(hparams, dict) else None})"
        )
    if not any(k.startswith("net.experts.") for k in keys):
        raise CheckpointMismatch(f"{path}: its state_dict holds no net.experts.* weights: not an MLGCNModule")


def load_model(path: str | Path) -> MLGCNModule:
    """:func:`mlgcn_lt.evaluation.predict.load_checkpoint` after :func:`check_checkpoint`."""
    check_checkpoint(path)
    return load_checkpoint(path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def items_from_table(table: ImageTable, classes: Sequence[str]) -> list[Item]:
    """The table's rows, labels re-ordered to the model's classes (NaN for classes the table lacks)."""
    order = [table.classes.index(c) if c in table.classes else -1 for c in classes]
    items = []
    for i in range(len(table)):
        row = table.labels[i]
        labels = np.array([row[j] if j >= 0 else np.nan for j in order], dtype=np.float32)
        path = table.image_path(i)
        items.append(Item(_slug(Path(table.paths[i]).stem), path, labels))
    return items


def table_for_split(split: str, ckpt: Path, config: str | None) -> ImageTable:
    """Split ``split`` of the data config of the run the checkpoint belongs to (``config.yaml``)."""
    from omegaconf import OmegaConf

    from mlgcn_lt.config import setup_config_system
    from mlgcn_lt.data.datamodule import build_datamodule

    cfg_path = Path(config) if config else ckpt.resolve().parent.parent / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"--split needs the run's config.yaml: {cfg_path} not found (pass --config)")
    setup_config_system()
    cfg = OmegaConf.load(cfg_path)
    if "data" not in cfg:
        raise ValueError(f"{cfg_path}: no 'data' section (expected a training run's config.yaml)")
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    if split not in datamodule.tables:
        raise ValueError(f"--split {split!r}: known splits {sorted(datamodule.tables)}")
    return datamodule.tables[split]


def resolve_classes(requested: Sequence[str] | None, known: Sequence[str]) -> list[int] | None:
    """Indices of ``--classes`` in the model's class list; an unknown name is an error listing the known ones."""
    if not requested:
        return None
    unknown = [c for c in requested if c not in known]
    if unknown:
        raise ValueError(f"--classes: {unknown} not in the checkpoint's classes {list(known)}")
    return [list(known).index(c) for c in requested]


def _load_batch(items: Sequence[Item], size: int) -> torch.Tensor:
    transform = build_transform(None)
    return torch.stack([transform(load_grayscale(it.path, size)) for it in items])


def explain(
    model: MLGCNModule,
    items: Sequence[Item],
    out: Path,
    *,
    method: str = "gcn_cam",
    top_k: int = 3,
    classes: Sequence[int] | None = None,
    boxes: dict | None = None,
    overlays: int | None = None,
    image_size: int | None = None,
    batch_size: int = 8,
) -> list[Pointing]:
    """Overlays for ``items`` (the first ``overlays``) and, with ``boxes``, the pointing game's per-pair results."""
    if method not in METHODS:
        raise ValueError(f"unknown --method {method!r}; known: {list(METHODS)}")
    size = image_size_of(model, image_size)
    names = list(model.classes)
    net = model.net.eval()
    results: list[Pointing] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        images = _load_batch(batch, size)
        with torch.no_grad():
            probs = torch.sigmoid(net(images).logits.float()).numpy()
        wanted: list[list[int]] = []
        for b, it in enumerate(batch):
            show = start + b < (len(items) if overlays is None else overlays)
            chosen = list(classes) if classes is not None else list(np.argsort(-probs[b])[:top_k])
            scored = []
            if boxes is not None and it.labels is not None:
                scored = [j for j, c in enumerate(names) if it.labels[j] == 1 and (it.path.name, c) in boxes]
            wanted.append(sorted(set(chosen if show else []) | set(scored)))
        needed = sorted(set().union(*wanted)) if any(wanted) else []
        if not needed:
            continue
        maps = class_maps(net, images, needed, method).numpy()
        column = {j: k for k, j in enumerate(needed)}
        for b, it in enumerate(batch):
            image = images[b, 0].numpy()
            with Image.open(it.path) as im:
                original = im.size

            def boxes_of(j: int, it: Item = it, original=original) -> list:
                found = (boxes or {}).get((it.path.name, names[j]), [])
                return scale_boxes(found, original, (size, size))

            if boxes is not None and it.labels is not None:
                for j in wanted[b]:
                    if it.labels[j] == 1 and (it.path.name, names[j]) in boxes:
                        results.append(point(maps[b, column[j]], boxes_of(j), names[j]))
            if start + b >= (len(items) if overlays is None else overlays):
                continue
            chosen = list(classes) if classes is not None else list(np.argsort(-probs[b])[:top_k])
            panels = []
            for rank, j in enumerate(chosen, 1):
                cam = maps[b, column[j]]
                finding_png(
                    out / it.name / f"{rank}_{_slug(names[j])}.png", image, cam, names[j], probs[b, j], boxes_of(j)
                )
                panels.append((names[j], float(probs[b, j]), cam, boxes_of(j)))
            contact_sheet(out / it.name / "sheet.png", image, panels)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mlgcn_lt.explain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("images", nargs="*", help="image files to explain")
    p.add_argument("--ckpt", required=True, help="checkpoint of a training run")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    src = p.add_argument_group("images from a table")
    src.add_argument("--split", choices=["train", "val", "dev", "test"], help="a split of the run's data config")
    src.add_argument("--config", help="the run's config.yaml (default: two levels above --ckpt)")
    src.add_argument("--csv", help="a split CSV (with --root and --format)")
    src.add_argument("--root", help="folder the CSV's image paths are relative to")
    src.add_argument("--format", default="cxr_lt", choices=["cxr_lt", "nih", "csv"], dest="fmt")
    src.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--method", default="gcn_cam", choices=list(METHODS))
    p.add_argument("--top-k", type=int, default=3, help="findings per image, by probability (default 3)")
    p.add_argument("--classes", help="comma-separated findings to show instead of the top-k")
    p.add_argument("--pointing-game", action="store_true", help="score map maxima against boxes")
    p.add_argument("--boxes", help="box file (boxes.csv or BBox_List_2017.csv; default: found beside the images)")
    p.add_argument("--overlays", type=int, help="overlays for the first N images (default all; 8 with the game)")
    p.add_argument("--image-size", type=int, help="default: the size the checkpoint was trained at")
    p.add_argument("--batch-size", type=int, default=8)
    return p


def _items(args: argparse.Namespace, classes: Sequence[str]) -> tuple[list[Item], Path | None]:
    """The images to explain and the folder to look for boxes in."""
    sources = [bool(args.images), bool(args.csv), bool(args.split)]
    if sum(sources) != 1:
        raise ValueError("give exactly one of: image paths, --csv, --split")
    if args.images:
        items = [Item(_slug(Path(p).stem), Path(p)) for p in args.images]
        for it in items:
            if not it.path.is_file():
                raise FileNotFoundError(f"image not found: {it.path}")
        root = None
    else:
        if args.csv:
            if not args.root:
                raise ValueError("--csv needs --root (the folder its image paths are relative to)")
            options = {"classes": None} if args.fmt == "cxr_lt" else {}
            table = read_table(args.fmt, args.csv, args.root, **options)
        else:
            table = table_for_split(args.split, Path(args.ckpt), args.config)
        items, root = items_from_table(table, classes), table.root
    return (items[: args.limit] if args.limit else items), root


def run(args: argparse.Namespace) -> dict | None:
    model = load_model(args.ckpt)
    classes = resolve_classes([c.strip() for c in args.classes.split(",")] if args.classes else None, model.classes)
    items, root = _items(args, model.classes)
    boxes = None
    if args.pointing_game:
        box_file = Path(args.boxes) if args.boxes else (find_boxes(root) if root is not None else None)
        if box_file is None:
            raise FileNotFoundError(
                f"--pointing-game: no boxes.csv or BBox_List_2017.csv in {root}; pass --boxes (and a --split/--csv "
                "so that the images' labels are known)"
            )
        if root is None:
            raise ValueError("--pointing-game needs labelled images: use --split or --csv")
        boxes = boxes_by_image(read_boxes(box_file))
    overlays = args.overlays if args.overlays is not None else (8 if args.pointing_game else None)
    results = explain(
        model,
        items,
        args.out,
        method=args.method,
        top_k=args.top_k,
        classes=classes,
        boxes=boxes,
        overlays=overlays,
        image_size=args.image_size,
        batch_size=args.batch_size,
    )
    print(f"maps ({args.method}) of {len(items)} image(s) in {args.out}")
    if not args.pointing_game:
        return None
    summary = summarize(results, model.classes)
    summary["method"] = args.method
    path = write_summary(args.out, summary)
    print(to_table(summary))
    print(f"wrote {path}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(args)
    except (FileNotFoundError, ImageDecodeError, CheckpointMismatch, BoxError, TableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
