"""Image decoding: modes and bit depths, draft-mode JPEG, resize, augmentation, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_image
from mlgcn_lt.data.images import (
    AugmentConfig,
    ImageDecodeError,
    affine_matrix,
    build_transform,
    intensity_lut,
    load_grayscale,
)
from mlgcn_lt.data.validate import check_image


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


def test_12bit_data_in_a_16bit_png_uses_its_real_range(tmp_path):
    """0-4095 (12-bit DICOM data saved as 16-bit PNG) must span 0-255, not be divided by 65535 into 17 grey levels."""
    arr = np.array([[0, 4095], [2048, 1024]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = np.asarray(load_grayscale(tmp_path / "x.png", None))
    np.testing.assert_array_equal(out, [[0, 255], [128, 64]])


def test_png_sbit_chunk_sets_the_bit_depth(tmp_path):
    """A 12-bit image whose brightest pixel is 2000 is scaled by 4095 (declared), not 2047 (observed)."""
    from PIL.PngImagePlugin import PngInfo

    arr = np.array([[0, 2000], [1000, 10]], dtype=np.uint16)
    info = PngInfo()
    info.add(b"sBIT", bytes([12]))
    Image.fromarray(arr).save(tmp_path / "sbit.png", pnginfo=info)
    Image.fromarray(arr).save(tmp_path / "plain.png")
    assert np.asarray(load_grayscale(tmp_path / "sbit.png", None))[0, 1] == round(2000 * 255 / 4095)
    assert np.asarray(load_grayscale(tmp_path / "plain.png", None))[0, 1] == round(2000 * 255 / 2047)


@pytest.mark.parametrize(("mode", "value"), [("I;16", 4095), ("I;16", 0), ("F", 0.5)])
def test_constant_high_depth_image_is_a_bad_image_naming_the_file(tmp_path, mode, value):
    arr = np.full((8, 8), value, dtype=np.uint16 if mode == "I;16" else np.float32)
    path = tmp_path / ("flat.png" if mode == "I;16" else "flat.tiff")
    Image.fromarray(arr).save(path)
    with pytest.raises(ImageDecodeError, match=r"flat\.(png|tiff).*constant image"):
        load_grayscale(path, None)
    assert "constant image" in check_image(str(path), "full")  # what validate --full and the skip policy list


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_float_tiff_with_a_non_finite_pixel_is_a_bad_image(tmp_path, bad):
    arr = np.random.default_rng(0).random((8, 8), dtype=np.float32)
    arr[3, 4] = bad
    path = tmp_path / "f.tiff"
    Image.fromarray(arr).save(path)
    # errstate: not an anonymous numpy warning either (the old code warned and returned a black image)
    with np.errstate(all="raise"), pytest.raises(ImageDecodeError, match=r"f\.tiff.*1 non-finite pixel"):
        load_grayscale(path, None)


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


def test_augmentation_without_changes_is_the_identity_and_flip_mirrors():
    arr = np.random.default_rng(0).integers(0, 256, (24, 32), dtype=np.uint8)
    still = AugmentConfig(degrees=0, translate=0, scale_min=1, scale_max=1, brightness=0, contrast=0)
    np.testing.assert_array_equal(build_transform(still)(arr)[0].numpy(), arr)
    flip = AugmentConfig(degrees=0, translate=0, scale_min=1, scale_max=1, brightness=0, contrast=0, hflip=1.0)
    np.testing.assert_array_equal(build_transform(flip)(arr)[0].numpy(), arr[:, ::-1])


def test_augmentation_is_seeded_by_torch_and_takes_pil_or_arrays():
    arr = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    t = build_transform(AugmentConfig(hflip=0.5))
    torch.manual_seed(3)
    a = t(arr)
    torch.manual_seed(3)
    assert torch.equal(a, t(Image.fromarray(arr)))
    assert not torch.equal(a, t(arr))


@pytest.mark.parametrize("brightness_first", [True, False])
def test_intensity_lut_equals_brightness_and_contrast_applied_in_turn(brightness_first):
    arr = np.random.default_rng(1).integers(0, 256, (40, 50)).astype(np.float64)
    hist = np.bincount(arr.astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    lut = intensity_lut(hist, brightness=1.13, contrast=0.88, brightness_first=brightness_first)
    x = arr
    for op in ("b", "c") if brightness_first else ("c", "b"):
        x = np.clip(x * 1.13, 0, 255) if op == "b" else np.clip((x - x.mean()) * 0.88 + x.mean(), 0, 255)
    np.testing.assert_array_equal(lut[arr.astype(np.uint8)], np.rint(x).astype(np.uint8))


def test_affine_matrix_rotates_scales_and_shifts_about_the_centre():
    m = affine_matrix((11, 11), angle=90.0, scale=2.0, shift=(1.0, -1.0))
    np.testing.assert_allclose(m @ [5, 5, 1], [6, 4], atol=1e-9)  # the centre only moves by the shift
    np.testing.assert_allclose(m @ [6, 5, 1] - m @ [5, 5, 1], [0, -2], atol=1e-9)  # 90° turn, doubled


@pytest.mark.parametrize("kind", ["16bit", "rgba", "cmyk", "1x1"])
def test_unusual_but_valid_images_load(tmp_path, kind):
    if kind == "16bit":
        path = write_image(tmp_path / "x.png", (40, 30), mode="I;16")
    elif kind == "rgba":
        path = write_image(tmp_path / "x.png", (40, 30), mode="RGBA")
    elif kind == "cmyk":
        path = write_image(tmp_path / "x.jpg", (40, 30), mode="CMYK", fmt="JPEG")
    else:
        path = write_image(tmp_path / "x.png", (1, 1))
    assert check_image(str(path), "full") is None
    assert load_grayscale(path, 32).size == (32, 32)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", (200, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200 x 200 = 4 x the limit
    assert "decompression bomb" in check_image(str(path), "header")
    with pytest.raises(ImageDecodeError, match="big.png"):
        load_grayscale(path, 32)
