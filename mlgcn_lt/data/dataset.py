"""A map-style dataset over an :class:`ImageTable`: one dict per image (uint8 image, float targets, row index)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mlgcn_lt.data.images import load_grayscale
from mlgcn_lt.data.tables import ImageTable


class ImageTableDataset(Dataset):
    """Rows of ``table`` as ``{"image": uint8 (1, S, S), "target": float32 (C,), "index": int}``."""

    def __init__(self, table: ImageTable, image_size: int, transform: v2.Transform) -> None:
        self.table = table
        self.image_size = int(image_size)
        self.transform = transform
        self.targets = torch.from_numpy(table.labels)

    @property
    def classes(self) -> list[str]:
        return self.table.classes

    @property
    def labels(self):
        return self.table.labels

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Row ``key``, or ``(row, seed)``: the augmentation then draws from its own generator seeded by ``seed``."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = load_grayscale(self.table.image_path(i), self.image_size)
        if seed is None:
            image = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image = self.transform(img)
        return {"image": image, "target": self.targets[i], "index": i}
