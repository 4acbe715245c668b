"""Synthetic CXR-LT: the embedded default data set, generated on the fly in the exact CXR-LT 2023 layout.

``generate(out_dir)`` writes ``train.csv``, ``development.csv`` and ``test.csv`` (the metadata columns,
``path`` relative to ``out_dir`` in the MIMIC-CXR-JPG layout ``files/p10/p10000032/s50414267/<dicom_id>.jpg``,
then the 26 labels in official order), 8-bit grayscale JPEGs, ``boxes.csv`` (where each finding's cue was drawn:
``split, dicom_id, path, class, x, y, w, h`` in pixels of the stored image) and ``manifest.json`` last.
``ensure`` does so atomically and only when needed; ``python -m mlgcn_lt.data.synthetic --out DIR`` is the CLI.

Patients have 1-3 studies, studies 1-2 images (PA or AP, plus a lateral); splits are disjoint by patient.
Labels belong to the study (its images share them) and come from :mod:`mlgcn_lt.data.synthetic.labels`
(the real long tail and clinical co-occurrence clusters; every class has at least 8 positive images in train
and 3 in development and test, see ``min_positives``). Studies of a patient share their latent state with
probability ``SHARE_STATE``. Images come from :mod:`mlgcn_lt.data.synthetic.draw` (one visual cue per finding,
all of similar subtlety). Everything is a deterministic function of the parameters in the manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mlgcn_lt.data.classes import CXR_LT_2023_CLASSES, CXR_LT_2023_METADATA
from mlgcn_lt.data.synthetic.draw import draw_image_with_boxes
from mlgcn_lt.data.synthetic.labels import (
    LATENTS,
    MIN_POSITIVES,
    label_model,
    min_positives,
    sample_given_states,
    sample_labels,
    sample_states,
    target_rates,
    top_up,
)

__all__ = [
    "BOXES",
    "BOX_COLUMNS",
    "COLUMNS",
    "DEFAULTS",
    "FORMAT_VERSION",
    "MANIFEST",
    "MIN_POSITIVES",
    "SPLITS",
    "VIEW_MEANINGS",
    "build_tables",
    "ensure",
    "generate",
    "is_complete",
    "label_model",
    "main",
    "min_positives",
    "sample_labels",
    "target_rates",
]

#: 2: boxes.csv added.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
BOXES = "boxes.csv"
BOX_COLUMNS = ("split", "dicom_id", "path", "class", "x", "y", "w", "h")
SPLITS = ("train", "development", "test")
#: Columns of every split table, in order: metadata, image path, the 26 labels.
COLUMNS = (*CXR_LT_2023_METADATA, "path", *CXR_LT_2023_CLASSES)
VIEW_MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}
DEFAULTS = {"seed": 0, "n_train": 3000, "n_dev": 600, "n_test": 600, "image_size": 128}
_OWN_NAMES = {MANIFEST, BOXES, "files", *(f"{s}.csv" for s in SPLITS)}
#: Probability that a later study of a patient keeps the latent state of the patient's first study.
SHARE_STATE = 0.5


# ------------------------------------------------------------------------------------------- tables and files
def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(rng.bytes(4).hex() for _ in range(5))


def _split_studies(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient index, rank within the patient and image count of each study of an ``n``-image split."""
    patient, rank, n_img, total, pid = [], [], [], 0, 0
    while total < n:
        for r in range(int(rng.choice(3, p=[0.5, 0.3, 0.2])) + 1):
            k = min(1 if rng.random() < 0.6 else 2, n - total)
            if k == 0:
                break
            patient.append(pid)
            rank.append(r)
            n_img.append(k)
            total += k
        pid += 1
    return np.array(patient), np.array(rank), np.array(n_img)


def build_tables(seed: int = 0, n_train: int = 3000, n_dev: int = 600, n_test: int = 600) -> dict[str, pd.DataFrame]:
    """The three split tables (CXR-LT columns, labels topped up), without drawing any image."""
    model = label_model()
    icu = np.append(model.configs[:, LATENTS.index("icu")], False)
    id_rng = np.random.default_rng([seed, 0])
    subjects: set[int] = set()
    studies_seen: set[int] = set()
    tables = {}
    for i, (split, n) in enumerate(zip(SPLITS, (n_train, n_dev, n_test), strict=True)):
        rng = np.random.default_rng([seed, 1, i])
        patient, rank, n_img = _split_studies(n, rng)
        states = sample_states(len(patient), rng, model)
        first = np.searchsorted(patient, patient)  # index of each patient's first study
        share = (rank > 0) & (rng.random(len(patient)) < SHARE_STATE)
        states[share] = states[first[share]]
        labels = sample_given_states(states, rng, model)
        top_up(labels, n_img, states, min_positives(split, n), rng)
        ap = rng.random(len(patient)) < np.where(icu[states], 0.8, 0.3)
        rows = []
        subject = 0
        for s in range(len(patient)):
            if rank[s] == 0:
                subject = _new_id(id_rng, subjects, 10_000_000, 20_000_000)
            study = _new_id(id_rng, studies_seen, 50_000_000, 60_000_000)
            for view in ("AP" if ap[s] else "PA", "LATERAL")[: n_img[s]]:
                dicom = _dicom_id(id_rng)
                path = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
                rows.append((dicom, subject, study, view, VIEW_MEANINGS[view], path, *labels[s].tolist()))
        tables[split] = pd.DataFrame(rows, columns=list(COLUMNS))
    return tables


def _new_id(rng: np.random.Generator, seen: set[int], lo: int, hi: int) -> int:
    while (value := int(rng.integers(lo, hi))) in seen:
        pass
    seen.add(value)
    return value


def _params(seed: int, n_train: int, n_dev: int, n_test: int, image_size: int) -> dict[str, int]:
    if min(n_train, n_dev, n_test) < 1 or image_size < 16 or seed < 0:
        raise ValueError("need seed >= 0, at least one image per split and image_size >= 16")
    return {"seed": seed, "n_train": n_train, "n_dev": n_dev, "n_test": n_test, "image_size": image_size}


def generate(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 3000,
    n_dev: int = 600,
    n_test: int = 600,
    image_size: int = 128,
) -> Path:
    """Write a synthetic CXR-LT into ``out_dir`` (which must be absent or empty); ``manifest.json`` last."""
    params = _params(seed, n_train, n_dev, n_test, image_size)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; use ensure() to (re)generate a data set in place")
    out.mkdir(parents=True, exist_ok=True)
    tables = build_tables(seed, n_train, n_dev, n_test)
    boxes = []
    for i, (split, table) in enumerate(tables.items()):
        findings = table[list(CXR_LT_2023_CLASSES)].to_numpy(bool)
        columns = ["subject_id", "ViewPosition", "path", "dicom_id"]
        for r, (subject, view, path, dicom) in enumerate(table[columns].itertuples(False)):
            names = {c for c, f in zip(CXR_LT_2023_CLASSES, findings[r], strict=True) if f}
            rng = np.random.default_rng([seed, 2, i, r])
            patient_rng = np.random.default_rng([seed, 3, subject])
            img, drawn = draw_image_with_boxes(names, view, image_size, rng, patient_rng)
            boxes += [(split, dicom, path, c, *box) for c, box in drawn.items()]
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(out / path, format="JPEG", quality=95)
        table.to_csv(out / f"{split}.csv", index=False, lineterminator="\n")
    pd.DataFrame(boxes, columns=list(BOX_COLUMNS)).to_csv(out / BOXES, index=False, lineterminator="\n")
    manifest = {
        "format": "cxr-lt-2023-synthetic",
        "format_version": FORMAT_VERSION,
        "params": params,
        "images": {split: len(t) for split, t in tables.items()},
        "classes": list(CXR_LT_2023_CLASSES),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def is_complete(out_dir: str | Path, **params: int) -> bool:
    """Whether ``out_dir`` holds a complete data set generated with ``params`` (missing ones: defaults)."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    want = {**DEFAULTS, **params}
    return (
        manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("params") == want
        and all((out / f"{s}.csv").is_file() for s in SPLITS)
        and (out / BOXES).is_file()
    )


def _replaceable(out: Path) -> bool:
    """Whether ``out`` looks like (part of) a generated data set, so that ensure() may delete it."""
    return out.is_dir() and all(p.name in _OWN_NAMES for p in out.iterdir())


def ensure(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 3000,
    n_dev: int = 600,
    n_test: int = 600,
    image_size: int = 128,
    force: bool = False,
) -> Path:
    """Return ``out_dir`` holding a complete data set with these parameters; generate it atomically if needed.

    The data set is built in a unique temporary sibling and renamed into place; an older or incomplete one is
    renamed away and deleted. Concurrent callers all end with a valid data set (a loser discards its copy).
    """
    out = Path(out_dir)
    params = _params(seed, n_train, n_dev, n_test, image_size)
    if not force and is_complete(out, **params):
        return out
    if out.exists() and not _replaceable(out):
        raise FileExistsError(f"{out} exists and is not a synthetic CXR-LT data set; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate(tmp, **params)
        for _ in range(20):
            try:
                os.rename(tmp, out)  # atomic; fails if ``out`` exists and is not empty
                return out
            except OSError:
                if not force and is_complete(out, **params):  # another process won the race
                    shutil.rmtree(tmp, ignore_errors=True)
                    return out
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(out, old)
            except FileNotFoundError:
                continue
            shutil.rmtree(old, ignore_errors=True)
        raise RuntimeError(f"could not move the generated data set into {out}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temps(out: Path) -> None:
    """Delete temporary and old siblings left by dead processes (an interrupted ensure())."""
    for p in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        try:
            os.kill(int(p.name[len(out.name) + 6 :].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass


def main(argv: list[str] | None = None) -> int:
    """CLI: generate (or reuse) a synthetic CXR-LT and print a summary."""
    ap = argparse.ArgumentParser(prog="python -m mlgcn_lt.data.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--n-train", type=int, default=DEFAULTS["n_train"])
    ap.add_argument("--n-dev", type=int, default=DEFAULTS["n_dev"])
    ap.add_argument("--n-test", type=int, default=DEFAULTS["n_test"])
    ap.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    ap.add_argument("--force", action="store_true", help="regenerate even if a matching data set exists")
    a = ap.parse_args(argv)
    start = time.perf_counter()
    out = ensure(
        a.out,
        seed=a.seed,
        n_train=a.n_train,
        n_dev=a.n_dev,
        n_test=a.n_test,
        image_size=a.image_size,
        force=a.force,
    )
    print(f"synthetic CXR-LT in {out} ({time.perf_counter() - start:.1f} s)")
    train = None
    for split in SPLITS:
        table = pd.read_csv(out / f"{split}.csv")
        train = table if train is None else train
        print(f"  {split:12s} {len(table):6d} images  {table['subject_id'].nunique():5d} patients")
    print("positives per class in train:")
    for cls in CXR_LT_2023_CLASSES:
        print(f"  {cls:28s} {int(train[cls].sum()):6d}")
    return 0
