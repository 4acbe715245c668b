"""Image decoding (8-bit grayscale, JPEG draft mode, bilinear resize) and chest-X-ray-plausible augmentation.

Images leave the loader as ``uint8`` tensors of shape (1, H, W): conversion to float, normalisation and
replication to the backbone's channels happen on the device, inside the model (:class:`InputNormalizer`), so the
loader does the least work and moves a quarter of the bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFile
from torchvision.transforms import v2

#: Pillow's decompression-bomb guard, raised to fit the largest real chest X-rays (~4k x 5k) with margin.
Image.MAX_IMAGE_PIXELS = 64_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(OSError):
    """An image that cannot be decoded; the message names the file and the reason."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit grayscale ('L'); 16-bit and 32-bit integer images are scaled by their bit range."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(arr.max())
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become black (background of an X-ray), not whatever colour they happen to hold.
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return img.convert("L")  # RGB, CMYK, P, 1, YCbCr...


def load_grayscale(path: str | os.PathLike, size: int | None) -> Image.Image:
    """Decode ``path`` as 8-bit grayscale, resized (bilinear) to ``size`` x ``size`` (``None`` keeps the size).

    For JPEGs larger than the target, Pillow's draft mode lets the decoder downsample by 2/4/8 while decoding.
    """
    try:
        with Image.open(path) as img:
            if size is not None and img.format == "JPEG":
                img.draft("L", (size, size))
            img.load()
            out = _to_8bit(img)
    except FileNotFoundError as e:
        raise ImageDecodeError(f"image not found: {path}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
    if size is not None and out.size != (size, size):
        out = out.resize((size, size), Image.Resampling.BILINEAR)
    return out


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation plausible for chest X-rays: small affine and brightness/contrast, no flips or turns."""

    enabled: bool = True
    degrees: float = 7.0
    translate: float = 0.05
    scale_min: float = 0.92
    scale_max: float = 1.08
    brightness: float = 0.15
    contrast: float = 0.15
    hflip: float = 0.0


def build_transform(augment: AugmentConfig | None) -> v2.Transform:
    """PIL 'L' image → uint8 tensor (1, H, W); training augmentation runs on the 8-bit PIL image (cheap)."""
    steps: list[v2.Transform] = []
    if augment is not None and augment.enabled:
        steps.append(
            v2.RandomAffine(
                degrees=augment.degrees,
                translate=(augment.translate, augment.translate),
                scale=(augment.scale_min, augment.scale_max),
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
        if augment.brightness or augment.contrast:
            steps.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip(augment.hflip))
    steps.append(v2.PILToTensor())
    return v2.Compose(steps)


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL 'L' image → uint8 tensor (1, H, W) without augmentation."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).unsqueeze(0)
