"""Image decoding (8-bit grayscale, JPEG draft mode, antialiased resize) and chest-X-ray-plausible augmentation.

Images leave the loader as ``uint8`` tensors of shape (1, H, W): conversion to float, normalisation and
replication to the backbone's channels happen on the device, inside the model (:class:`InputNormalizer`), so the
loader does the least work and moves a quarter of the bytes. Training augmentation works on the 8-bit image too:
one affine warp (rotation, scale, shift, optional flip) and one 256-entry lookup table (brightness and contrast),
about 2 ms at 1024 px where torchvision's PIL ops take ~17 ms.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from PIL import Image, ImageFile

# No OpenCV thread pool: a loader worker is one thread by design (and a pool does not survive fork).
cv2.setNumThreads(0)

#: Pillow's decompression-bomb guard, raised to fit the largest real chest X-rays (~4k x 5k) with margin.
Image.MAX_IMAGE_PIXELS = 64_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False

Resample = Literal["bilinear", "bicubic", "lanczos"]
#: Pillow's filters; all are antialiased when downscaling (the kernel widens with the scale factor).
RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageDecodeError(OSError):
    """An image that cannot be decoded; the message names the file and the reason."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_significant_bits(path: str | os.PathLike) -> int | None:
    """The grey channel's significant bits from a PNG's ``sBIT`` chunk (Pillow does not read it), else ``None``."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind in (b"IDAT", b"IEND"):  # sBIT must precede the image data
                return None
            if kind == b"sBIT" and length >= 1:
                return f.read(1)[0] or None
            f.seek(length + 4, os.SEEK_CUR)  # chunk data + CRC


def significant_bits(img: Image.Image, path: str | os.PathLike) -> int | None:
    """Bits the file declares its samples use (PNG ``sBIT``, TIFF ``BitsPerSample``), ``None`` if not declared."""
    if img.format == "PNG":
        return _png_significant_bits(path)
    if img.format == "TIFF" and hasattr(img, "tag_v2"):
        bits = img.tag_v2.get(258)  # BitsPerSample
        bits = bits[0] if isinstance(bits, tuple) else bits
        return int(bits) if bits else None
    return None


def _integer_top(arr: np.ndarray, container_bits: int, declared_bits: int | None) -> float:
    """White level of an integer image: ``2^b - 1`` for its real bit depth ``b``.

    ``b`` is the declared significant bits when they are fewer than the container's and the pixels fit them (a
    PNG written by the spec scales 12-bit data up to 16 bits, and then the container's range applies); otherwise the
    observed maximum rounded up to ``2^k - 1``, so 12-bit data in a 16-bit file (0-4095, common after DICOM
    conversion) is not scaled by 65535 into near-black.
    """
    peak = int(arr.max(initial=0))
    if declared_bits is not None and declared_bits < container_bits:
        top = (1 << declared_bits) - 1
        return float(top if peak <= top else (1 << container_bits) - 1)
    return float((1 << max(peak.bit_length(), 1)) - 1)


def _to_8bit(img: Image.Image, declared_bits: int | None = None) -> Image.Image:
    """Any Pillow mode → 8-bit grayscale ('L').

    16- and 32-bit integer images are scaled by their real bit range (:func:`_integer_top`), float images by their
    min-max range. A constant 16-bit / 32-bit / float image (no range to scale by) and a float image with a
    non-finite pixel are errors (``ValueError``; :func:`load_grayscale` names the file).
    """
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        if arr.size and arr.min() == arr.max():
            raise ValueError(f"constant image (every pixel {int(arr.flat[0])}, mode {img.mode}), no range to scale by")
        top = _integer_top(arr, 16 if img.mode.startswith("I;16") else 32, declared_bits)
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.all():
            bad = arr[~finite]
            raise ValueError(
                f"{bad.size} non-finite pixel(s) in a float image "
                f"({int(np.isnan(bad).sum())} NaN, {int(np.isinf(bad).sum())} inf)"
            )
        lo, hi = float(arr.min()), float(arr.max())
        if lo == hi:
            raise ValueError(f"constant image (every pixel {lo}, float), no range to scale by")
        return Image.fromarray(np.rint((arr - lo) / (hi - lo) * 255.0).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become black (background of an X-ray), not whatever colour they happen to hold.
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return img.convert("L")  # RGB, CMYK, P, 1, YCbCr...


def load_grayscale(path: str | os.PathLike, size: int | None, resample: Resample = "bilinear") -> Image.Image:
    """Decode ``path`` as 8-bit grayscale, resized to ``size`` x ``size`` (``None`` keeps the size).

    For JPEGs larger than the target, Pillow's draft mode lets the decoder downsample by 2/4/8 while decoding (never
    below ``size``); ``resample`` (antialiased) does the rest. Bilinear is the paper's choice.
    """
    if resample not in RESAMPLE:
        raise ValueError(f"unknown resample filter {resample!r}; known: {sorted(RESAMPLE)}")
    try:
        with Image.open(path) as img:
            if size is not None and img.format == "JPEG":
                img.draft("L", (size, size))
            img.load()
            bits = significant_bits(img, path) if img.mode.startswith("I") else None
            out = _to_8bit(img, bits)
    except FileNotFoundError as e:
        raise ImageDecodeError(f"image not found: {path}") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
    if size is not None and out.size != (size, size):
        out = out.resize((size, size), RESAMPLE[resample])
    return out


class AugmentKind(enum.StrEnum):
    """``data.augment.kind``: ``default`` (small affine + brightness / contrast), ``release`` (the authors' 12 modes,
    :func:`release_augment`), ``none``."""

    default = "default"
    release = "release"
    none = "none"


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. ``kind=default``: plausible for chest X-rays, small affine and brightness/contrast, no
    flips or turns (the fields below); ``kind=release``: the authors' release (:func:`release_augment`, the fields
    below are not used); ``kind=none`` (or ``enabled=false``): no augmentation."""

    enabled: bool = True
    kind: AugmentKind = AugmentKind.default
    degrees: float = 7.0
    translate: float = 0.05
    scale_min: float = 0.92
    scale_max: float = 1.08
    brightness: float = 0.15
    contrast: float = 0.15
    hflip: float = 0.0


class XrayTransform:
    """8-bit image (PIL 'L' or uint8 (H, W) array) → uint8 tensor (1, H, W), augmented when ``augment`` is enabled.

    Augmentation draws its parameters from torch's RNG (seeded per loader worker, like torchvision's) and makes one
    pass over the pixels for the geometry (``cv2.warpAffine``, bilinear, black fill) and one for the intensities
    (brightness and contrast folded into a lookup table, applied in random order as ``ColorJitter`` does; the
    contrast pivot is the image mean, taken from its histogram).
    """

    def __init__(self, augment: AugmentConfig | None = None) -> None:
        if augment is not None and augment.kind not in AugmentKind.__members__:
            raise ValueError(f"data.augment.kind={augment.kind!r}; expected one of {list(AugmentKind.__members__)}")
        on = augment is not None and augment.enabled and augment.kind != AugmentKind.none
        self.augment = augment if on else None

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        arr = np.asarray(img) if isinstance(img, np.ndarray) else np.array(img, dtype=np.uint8)
        if arr.dtype != np.uint8 or arr.ndim != 2:
            raise ValueError(f"expected an 8-bit grayscale image, got {arr.dtype} of shape {arr.shape}")
        if self.augment is not None:
            release = self.augment.kind == AugmentKind.release
            arr = release_augment(arr) if release else self._augment(arr, self.augment)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr).unsqueeze(0)

    @staticmethod
    def _augment(arr: np.ndarray, a: AugmentConfig) -> np.ndarray:
        r = torch.rand(8, dtype=torch.float64).tolist()
        h, w = arr.shape
        matrix = affine_matrix(
            (w, h),
            angle=(2 * r[0] - 1) * a.degrees,
            scale=a.scale_min + r[1] * (a.scale_max - a.scale_min),
            shift=((2 * r[2] - 1) * a.translate * w, (2 * r[3] - 1) * a.translate * h),
            flip=r[4] < a.hflip,
        )
        if not np.allclose(matrix, np.eye(3)[:2]):
            arr = cv2.warpAffine(arr, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if a.brightness or a.contrast:
            hist = cv2.calcHist([arr], [0], None, [256], [0, 256]).ravel() if a.contrast else None
            lut = intensity_lut(
                hist,
                brightness=1 + (2 * r[5] - 1) * a.brightness,
                contrast=1 + (2 * r[6] - 1) * a.contrast,
                brightness_first=r[7] < 0.5,
            )
            arr = cv2.LUT(arr, lut)
        return arr


#: The release's number of augmentation modes, drawn uniformly per image (:func:`release_augment`).
RELEASE_MODES = 12


def release_augment(arr: np.ndarray, mode: int | None = None, factor: float | None = None) -> np.ndarray:
    """The authors' training augmentation on an 8-bit image: one of 12 modes, uniformly (torch's RNG).

    Modes 0-7 are the 8 symmetries of the square (0 identity; 1 flip of the 90° turn; 2 vertical flip; 3 270° turn;
    4 flip of the 180° turn, i.e. a horizontal flip; 5 90° turn; 6 180° turn; 7 flip of the 270° turn; turns
    counter-clockwise, flips upside down); 8 and 9 both rotate by +10° (counter-clockwise) about the centre
    ``(w/2, h/2)``, bilinear, black corners, same size (the release lists the same rotation twice, so it has
    probability 2/12 and there is no -10°); 10 scales intensities by w ~ U[0, 1); 11 by 1 + w. The release scales
    the float image and clips to [0, 1] after dividing by 255; here the product is rounded and clipped to
    [0, 255] (at most half a grey level apart). ``mode`` / ``factor`` fix the draw (tests).
    """
    if mode is None:
        mode = int(torch.randint(RELEASE_MODES, ()).item())
    if not 0 <= mode < RELEASE_MODES:
        raise ValueError(f"release augmentation mode must be in [0, {RELEASE_MODES}), got {mode}")
    if mode < 8:
        turns = {1: 1, 3: 3, 4: 2, 5: 1, 6: 2, 7: 3}.get(mode, 0)
        out = np.rot90(arr, k=turns) if turns else arr
        return np.ascontiguousarray(np.flipud(out) if mode in (1, 2, 4, 7) else out)
    if mode < 10:
        h, w = arr.shape
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), 10.0, 1.0)
        return cv2.warpAffine(arr, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    w = float(torch.rand((), dtype=torch.float64).item()) if factor is None else float(factor)
    scale = w if mode == 10 else 1.0 + w
    return np.clip(np.rint(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def affine_matrix(
    size: tuple[int, int], *, angle: float, scale: float, shift: tuple[float, float], flip: bool = False
) -> np.ndarray:
    """2x3 forward map: optional horizontal flip, then rotation by ``angle`` degrees and ``scale`` about the centre,
    then ``shift`` pixels."""
    w, h = size
    flip_m = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if flip else np.eye(3)
    rot = np.vstack([cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale), [0.0, 0.0, 1.0]])
    out = (rot @ flip_m)[:2]
    out[:, 2] += shift
    return out


def intensity_lut(
    hist: np.ndarray | None, *, brightness: float, contrast: float, brightness_first: bool = True
) -> np.ndarray:
    """uint8 lookup table of ``x * brightness`` and ``(x - mean) * contrast + mean`` (each clipped to [0, 255]).

    ``mean`` is the image mean at that point (from ``hist``, the 256-bin histogram of the input), as torchvision's
    ``adjust_contrast`` uses it.
    """
    v = np.arange(256, dtype=np.float64)
    for op in ("b", "c") if brightness_first else ("c", "b"):
        if op == "b":
            v = np.clip(v * brightness, 0.0, 255.0)
        elif hist is not None and contrast != 1.0:
            mean = float(hist @ v) / max(float(hist.sum()), 1.0)
            v = np.clip((v - mean) * contrast + mean, 0.0, 255.0)
    return np.rint(v).astype(np.uint8)


def build_transform(augment: AugmentConfig | None) -> XrayTransform:
    """8-bit image → uint8 tensor (1, H, W); with ``augment`` enabled, the training augmentation on the 8-bit image."""
    return XrayTransform(augment)
