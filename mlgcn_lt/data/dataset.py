"""A map-style dataset over an :class:`ImageTable`: one dict per image (uint8 image, float targets, row index)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from mlgcn_lt.data.cache import CachedImages
from mlgcn_lt.data.images import ImageDecodeError, Resample, load_grayscale
from mlgcn_lt.data.tables import ImageTable


class ImageTableDataset(Dataset):
    """Rows of ``table`` as ``{"image": uint8 (1, S, S), "target": float32 (C,), "index": int}``.

    Images come from ``cache`` (decoded and resized once by ``python -m mlgcn_lt.data.preprocess``) when given,
    else from the source files (decoded and resized on every read).
    """

    def __init__(
        self,
        table: ImageTable,
        image_size: int,
        transform: Callable[[Image.Image | np.ndarray], torch.Tensor],
        cache: CachedImages | None = None,
        resample: Resample = "bilinear",
        on_bad_image: str = "error",
        skip_log: Path | None = None,
    ) -> None:
        if cache is not None and (len(cache) != len(table) or cache.size != image_size):
            raise ValueError(
                f"cache of {len(cache)} images at {cache.size} px does not fit {len(table)} at {image_size} px"
            )
        self.table = table
        self.image_size = int(image_size)
        self.transform = transform
        self.cache = cache
        self.resample = resample
        self.targets = torch.from_numpy(table.labels)
        self.on_bad_image = on_bad_image
        self.skip_log = skip_log

    @property
    def classes(self) -> list[str]:
        return self.table.classes

    @property
    def labels(self):
        return self.table.labels

    def __len__(self) -> int:
        return len(self.table)

    def image(self, i: int) -> Image.Image | np.ndarray:
        """Row ``i``'s 8-bit image at the training size, before augmentation."""
        if self.cache is not None:
            return self.cache.read(i)
        return load_grayscale(self.table.image_path(i), self.image_size, self.resample)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Row ``key``, or ``(row, seed)``: the augmentation then draws from its own generator seeded by ``seed``."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        try:
            img = self.image(i)
        except ImageDecodeError as e:
            if self.on_bad_image != "skip":
                raise
            self._record_skip(i, e)
            return None  # dropped from its batch by collate_skipping_bad
        if seed is None:
            image = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image = self.transform(img)
        return {"image": image, "target": self.targets[i], "index": i}

    def _record_skip(self, i: int, error: Exception) -> None:
        """Log a skipped image (once per file per process) and append it to ``skip_log`` (one short line: atomic)."""
        path = str(self.table.image_path(i))
        warnings.warn(f"data.bad_images.policy=skip: dropped {path} from its batch: {error}", stacklevel=2)
        if self.skip_log is not None:
            line = f"{self.table.source},{int(self.table.lines[i])},{path},{str(error).replace(',', ';')}\n"
            self.skip_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.skip_log, "a") as f:
                f.write(line)


def collate_skipping_bad(batch: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Default collation of the samples that loaded; images skipped by ``data.bad_images.policy=skip`` are ``None``."""
    kept = [b for b in batch if b is not None]
    if not kept:
        raise RuntimeError("every image of a batch failed to load (data.bad_images.policy=skip); see bad_images.csv")
    return default_collate(kept)
