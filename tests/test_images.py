"""Image decoding: modes and bit depths, draft-mode JPEG, resize, augmentation, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image
from mlgcn_lt.data.images import AugmentConfig, ImageDecodeError, build_transform, load_grayscale


@pytest.mark.parametrize(
    ("mode", "fmt", "suffix"),
    [
        ("L", "PNG", "png"),
        ("RGB", "JPEG", "jpg"),
        ("RGBA", "PNG", "png"),
        ("I;16", "PNG", "png"),
        ("CMYK", "JPEG", "jpg"),
        ("P", "PNG", "png"),
        ("1", "PNG", "png"),
        ("L", "JPEG", "jpg"),
    ],
)
def test_any_mode_decodes_to_8bit_gray_of_requested_size(tmp_path, mode, fmt, suffix):
    path = write_image(tmp_path / f"x.{suffix}", (37, 51), mode=mode, fmt=fmt)
    img = load_grayscale(path, 32)
    assert img.mode == "L" and img.size == (32, 32)


def test_16bit_png_is_scaled_by_its_bit_range(tmp_path):
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = np.asarray(load_grayscale(tmp_path / "x.png", None))
    np.testing.assert_array_equal(out, [[0, 255], [128, 1]])


def test_rgba_transparent_pixels_become_black(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., :3] = 200
    arr[:2, :, 3] = 255  # top half opaque grey, bottom half transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "x.png")
    out = np.asarray(load_grayscale(tmp_path / "x.png", None))
    assert (out[:2] == 200).all() and (out[2:] == 0).all()


def test_large_jpeg_uses_draft_mode_and_keeps_content(tmp_path):
    # A left-dark / right-bright 2000 px JPEG: downsampled output must keep the structure.
    arr = np.zeros((2000, 1600), dtype=np.uint8)
    arr[:, 800:] = 220
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=90)
    out = np.asarray(load_grayscale(tmp_path / "big.jpg", 64)).astype(int)
    assert out.shape == (64, 64)
    assert out[:, :28].mean() < 10 and out[:, 36:].mean() > 210


def test_resize_is_identity_at_native_size(tmp_path):
    path = write_image(tmp_path / "x.png", (32, 32))
    np.testing.assert_array_equal(np.asarray(load_grayscale(path, 32)), np.asarray(Image.open(path)))


@pytest.mark.parametrize("content", [None, b"", b"this is not an image", "truncated"])
def test_unreadable_images_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        write_image(path, (64, 64), fmt="JPEG")
        path.write_bytes(path.read_bytes()[:200])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        load_grayscale(path, 32)


def test_eval_transform_is_plain_uint8_and_train_transform_augments(tmp_path):
    img = load_grayscale(write_image(tmp_path / "x.png", (32, 32)), 32)
    plain = build_transform(None)(img)
    assert plain.dtype == torch.uint8 and plain.shape == (1, 32, 32)
    np.testing.assert_array_equal(plain[0].numpy(), np.asarray(img))
    torch.manual_seed(0)
    aug = build_transform(AugmentConfig())(img)
    assert aug.dtype == torch.uint8 and aug.shape == (1, 32, 32)
    assert not torch.equal(aug, plain)
    assert build_transform(AugmentConfig(enabled=False))(img).equal(plain)
