"""Loader throughput per worker at the training size, from synthetic full-size chest-X-ray JPEGs it writes itself.

Three ways to produce one augmented training sample, each timed in this process on one thread (a loader worker):
``naive`` (full-size RGB decode, resize, torchvision augmentation on the float tensor, what a generic pipeline does),
``ours`` (the dataset without a cache: JPEG draft-mode decode to 8-bit grayscale, antialiased resize, one-pass 8-bit
augmentation) and ``cache`` (the dataset reading ``data.cache_dir``, same augmentation).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms import v2

from mlgcn_lt.data.cache import build_cache, open_cached
from mlgcn_lt.data.dataset import ImageTableDataset
from mlgcn_lt.data.images import AugmentConfig, build_transform
from mlgcn_lt.data.tables import ImageTable


def synthetic_xray(rng: np.random.Generator, width: int, height: int, noise: float = 3.0) -> np.ndarray:
    """An 8-bit chest-X-ray-like image: smooth random anatomy, two darker lung fields, a vertical gradient and sensor
    noise (the noise is what makes real X-ray JPEGs large: ~2 MB at 2500 x 3000, quality 95)."""
    field = Image.fromarray(rng.normal(0.0, 1.0, (24, 20)).astype(np.float32), mode="F")
    smooth = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC))
    yy, xx = np.ogrid[0:height, 0:width]
    yy, xx = yy.astype(np.float32) / height, xx.astype(np.float32) / width
    lungs = np.zeros((height, width), np.float32)
    for cx in (0.3, 0.7):
        lungs += (((xx - cx) / 0.17) ** 2 + ((yy - 0.45) / 0.3) ** 2 < 1.0).astype(np.float32)
    img = 140.0 + 25.0 * smooth - 60.0 * lungs + 20.0 * yy + rng.normal(0.0, noise, (height, width)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpegs(root: Path, n: int, width: int, height: int, quality: int = 95, seed: int = 0) -> list[str]:
    """``n`` synthetic X-ray JPEGs under ``root``; their paths relative to it."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        rel = f"files/img{i:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_xray(rng, width, height)).save(root / rel, quality=quality)
        paths.append(rel)
    return paths


def naive_transform(augment: AugmentConfig) -> v2.Transform:
    """The same augmentation done the generic way: torchvision ops on the float RGB tensor."""
    return v2.Compose(
        [
            v2.RandomAffine(
                degrees=augment.degrees,
                translate=(augment.translate, augment.translate),
                scale=(augment.scale_min, augment.scale_max),
                interpolation=v2.InterpolationMode.BILINEAR,
            ),
            v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast),
        ]
    )


def naive_sample(path: Path, size: int, transform: v2.Transform) -> torch.Tensor:
    """Full-size RGB decode, bilinear resize, float tensor, augmentation."""
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return transform(v2.functional.to_dtype(v2.functional.pil_to_tensor(rgb), torch.float32, scale=True))


def _rate(fn: Callable[[int], object], n_images: int, samples: int, min_seconds: float) -> float:
    """Samples per second of ``fn`` over at least ``samples`` calls and ``min_seconds``."""
    count, start = 0, time.perf_counter()
    while count < samples or time.perf_counter() - start < min_seconds:
        fn(count % n_images)
        count += 1
    return count / (time.perf_counter() - start)


def _ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def measure_loader(
    workdir: Path,
    *,
    size: int = 1024,
    jpeg_size: tuple[int, int] = (2500, 3000),
    n_images: int = 4,
    samples: int = 8,
    min_seconds: float = 1.0,
    repeats: int = 3,
) -> dict:
    """Samples/s per worker of the three paths (median over ``repeats`` interleaved rounds) and their ratios."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a loader worker has
    try:
        root = workdir / "jpegs"
        paths = write_jpegs(root, n_images, *jpeg_size)
        report = build_cache(paths, root, workdir / "cache", size)
        table = ImageTable(Path("bench"), root, paths, ["x"], np.zeros((n_images, 1), np.float32), pd.DataFrame())
        augment = AugmentConfig()
        ours = ImageTableDataset(table, size, build_transform(augment))
        cached = ImageTableDataset(
            table, size, build_transform(augment), open_cached(table, workdir / "cache", size, "bilinear")
        )
        naive_tf = naive_transform(augment)
        paths_fn: dict[str, Callable[[int], object]] = {
            "naive": lambda i: naive_sample(table.image_path(i), size, naive_tf),
            "ours": ours.__getitem__,
            "cache": cached.__getitem__,
        }
        for fn in paths_fn.values():  # warm-up: page cache, lazy imports
            fn(0)
        rates: dict[str, list[float]] = {k: [] for k in paths_fn}
        for _ in range(repeats):
            for name, fn in paths_fn.items():
                rates[name].append(_rate(fn, n_images, samples, min_seconds))
        pixels = cached.image(0)
        pil = Image.fromarray(pixels)
        torchvision_pil = v2.Compose([naive_tf, v2.PILToTensor()])
        out = {
            "image_size": size,
            "jpeg_size": list(jpeg_size),
            "jpeg_mb_mean": float(np.mean([(root / p).stat().st_size for p in paths]) / 1e6),
            "samples_per_s_per_worker": {k: statistics.median(v) for k, v in rates.items()},
            "preprocess_ms_per_image": 1000.0 * report.seconds / max(1, report.written),
            "augment_ms": {
                "ours_8bit_one_pass": _ms(lambda: ours.transform(pixels)),
                "torchvision_on_pil_L": _ms(lambda: torchvision_pil(pil)),
            },
            "repeats": repeats,
        }
        for k in ("ours", "cache"):
            out[f"loader_speedup_{k}_vs_naive"] = statistics.median(
                a / b for a, b in zip(rates[k], rates["naive"], strict=True)
            )
        return out
    finally:
        torch.set_num_threads(threads)
