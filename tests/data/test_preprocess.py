"""The decode-once cache: round trip, resume, stale sources, interrupted writes, datamodule and CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from helpers import write_cxr_lt_dir, write_image
from mlgcn_lt.data import cache as cache_mod
from mlgcn_lt.data.cache import CacheError, StoreIndex, build_cache, open_cached, store_dir
from mlgcn_lt.data.datamodule import CXRDataModule
from mlgcn_lt.data.images import load_grayscale
from mlgcn_lt.data.tables import read_table


@pytest.fixture
def data(tmp_path):
    """A tiny CXR-LT layout (fresh per test: some tests change its files) with one large JPEG (draft mode)."""
    root = write_cxr_lt_dir(tmp_path / "data", {"train": 12, "development": 4, "test": 4})
    table = read_table("cxr_lt", root / "train.csv", root)
    write_image(table.image_path(0), (300, 260), seed=99)  # larger than the target: decoded in draft mode
    return root, table


@pytest.fixture
def decodes(monkeypatch):
    """Counts the images the cache builder decodes."""
    calls: list[str] = []

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return load_grayscale(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_grayscale", counting)
    return calls


def test_cached_pixels_equal_direct_decode_and_resize(data, tmp_path):
    root, table = data
    report = build_cache(table.paths, root, tmp_path / "c", 32, "lanczos", chunk_images=5)
    assert report.written == 12 and not report.failures and len(StoreIndex.load(report.store, 32).chunks) == 3
    reader = open_cached(table, tmp_path / "c", 32, "lanczos")
    for i in range(len(table)):
        expected = np.asarray(load_grayscale(table.image_path(i), 32, "lanczos"))
        np.testing.assert_array_equal(reader.read(i), expected)
    sub = table.subset([5, 0])  # a subset (a carved split) maps onto the same entries
    np.testing.assert_array_equal(open_cached(sub, tmp_path / "c", 32, "lanczos").read(1), reader.read(0))


def test_second_run_decodes_only_what_is_new(data, tmp_path, decodes):
    root, table = data
    build_cache(table.paths[:8], root, tmp_path / "c", 32)
    assert len(decodes) == 8
    report = build_cache(table.paths, root, tmp_path / "c", 32)
    assert len(decodes) == 12 and report.cached == 8 and report.written == 4
    build_cache(table.paths, root, tmp_path / "c", 32)
    assert len(decodes) == 12


def test_changed_source_or_size_is_never_served_stale(data, tmp_path, decodes):
    root, table = data
    build_cache(table.paths, root, tmp_path / "c", 32)
    write_image(table.image_path(3), (40, 48), seed=12345)  # new content
    st = os.stat(table.image_path(3))
    os.utime(table.image_path(3), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(CacheError, match=r"1 changed on disk.*python -m mlgcn_lt.data.preprocess"):
        open_cached(table, tmp_path / "c", 32, "bilinear")
    with pytest.raises(CacheError, match="12 are not cached"):
        open_cached(table, tmp_path / "c", 48, "bilinear")  # another size is another store
    build_cache(table.paths, root, tmp_path / "c", 32)
    assert decodes[12:] == [str(table.image_path(3))]
    fresh = np.asarray(load_grayscale(table.image_path(3), 32))
    np.testing.assert_array_equal(open_cached(table, tmp_path / "c", 32, "bilinear").read(3), fresh)


def test_missing_or_undecodable_images_are_reported_not_cached(data, tmp_path):
    root, table = data
    table.image_path(1).write_bytes(b"not an image")
    table.image_path(2).unlink()
    report = build_cache(table.paths, root, tmp_path / "c", 32)
    assert report.written == 10 and sorted(rel for rel, _ in report.failures) == sorted(table.paths[1:3])


def test_interrupted_chunk_is_not_valid_and_is_redone(data, tmp_path, monkeypatch):
    root, table = data
    seen = []

    def crash_in_second_chunk(path, *args, **kwargs):
        seen.append(path)
        if len(seen) == 7:  # the second chunk dies after 2 of its 5 images were written
            raise KeyboardInterrupt
        return load_grayscale(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_grayscale", crash_in_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        build_cache(table.paths, root, tmp_path / "c", 32, chunk_images=5)
    store = store_dir(tmp_path / "c", root, 32, "bilinear")
    assert sorted(StoreIndex.load(store, 32).entries) == sorted(table.paths[:5])  # only the finished chunk
    assert not list((store / "chunks").glob(".*.tmp"))
    monkeypatch.setattr(cache_mod, "load_grayscale", load_grayscale)
    assert build_cache(table.paths, root, tmp_path / "c", 32).written == 7


def test_crash_between_pixels_and_marker_leaves_nothing_valid(data, tmp_path, monkeypatch):
    root, table = data

    def die(*args, **kwargs):
        raise OSError("disk full")

    store = store_dir(tmp_path / "c", root, 32, "bilinear")
    build_cache([], root, tmp_path / "c", 32)  # an empty store
    monkeypatch.setattr(cache_mod, "atomic_write", die)
    with pytest.raises(OSError, match="disk full"):
        cache_mod.write_chunk(str(store), "0-x", str(root), table.paths[:4], 32, "bilinear")
    assert (store / "chunks" / "0-x.u8").exists() and not StoreIndex.load(store, 32).entries  # pixels, no marker
    monkeypatch.undo()
    report = build_cache(table.paths, root, tmp_path / "c", 32)
    assert report.written == 12 and not (store / "chunks" / "0-x.u8").exists()  # orphan removed, images redone


def _dm(root, **kw) -> CXRDataModule:
    args = dict(format="cxr_lt", root=str(root), train_csv="train.csv", val_csv="development.csv", test_csv=None)
    return CXRDataModule(**args, image_size=32, batch_size=4, num_workers=0, split={"test_fraction": 0.25}, **kw)


def test_datamodule_reads_the_same_batches_from_the_cache(data, tmp_path):
    root, table = data
    with pytest.raises(CacheError, match="python -m mlgcn_lt.data.preprocess"):
        _dm(root, cache_dir=str(tmp_path / "c")).setup()
    dev = read_table("cxr_lt", root / "development.csv", root)
    build_cache(table.paths + dev.paths, root, tmp_path / "c", 32)
    plain, cached = _dm(root), _dm(root, cache_dir=str(tmp_path / "c"))
    plain.setup()
    cached.setup()
    assert set(cached.cached) == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        a = next(iter(plain.make_loader(plain.dataset(split, train_transform=False), batch_size=4)))
        b = next(iter(cached.make_loader(cached.dataset(split, train_transform=False), batch_size=4)))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])
    torch.manual_seed(0)
    a = plain.dataset("train")[0]["image"]
    torch.manual_seed(0)
    assert torch.equal(a, cached.dataset("train")[0]["image"])  # same augmentation on the same pixels


def test_cli_builds_from_hydra_overrides_in_parallel(data, tmp_path, hydra_cleanup, capsys):
    from mlgcn_lt.data.preprocess import main

    root, _ = data
    argv = [f"data.root={root}", "data=cxr_lt", "data.test_csv=test.csv", "data.image_size=24", "--no-progress"]
    assert main([*argv, f"data.cache_dir={tmp_path / 'c'}", "--workers", "2"]) == 0
    assert "20 decoded, 0 already cached, 0 failed" in capsys.readouterr().out
    assert main([*argv, f"data.cache_dir={tmp_path / 'c'}", "--workers", "0"]) == 0
    assert "0 decoded, 20 already cached" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(argv)  # no data.cache_dir
    assert "data.cache_dir" in capsys.readouterr().err
