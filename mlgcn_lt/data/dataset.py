"""A map-style dataset over an :class:`ImageTable`: one dict per image (uint8 image, float targets, row index)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mlgcn_lt.data.cache import CachedImages
from mlgcn_lt.data.images import Resample, load_grayscale
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
        img = self.image(i)
        if seed is None:
            image = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image = self.transform(img)
        return {"image": image, "target": self.targets[i], "index": i}
