"""Decode-once cache of resized 8-bit images: raw uint8 pixels in chunks, each valid only once its marker exists.

Layout under ``cache_dir``::

    <size>px-<resample>-v<VERSION>-<hash of data root>/   one store per (data root, image size, filter, format)
        store.json                                         what the store holds
        chunks/<name>.u8                                   n x size x size uint8 pixels, in marker order
        chunks/<name>.json                                 marker: the n images (relative path, bytes, mtime_ns)

A chunk's pixels go to a temporary file that is fsynced and renamed; its marker is written (atomically, fsynced)
only after that. An interrupted run therefore leaves at most pixel files without a marker: they are never read,
and the next run (under the store's lock) removes them and redoes their images. An image is served only while its
source file still has the byte size and modification time recorded in the marker: a replaced source is never served
stale, and the next preprocessing run decodes it again (the newest chunk wins; chunks left with no current entry
are removed).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlgcn_lt.data.images import RESAMPLE, ImageDecodeError, Resample, load_grayscale
from mlgcn_lt.data.tables import ImageTable
from mlgcn_lt.utils.io import atomic_write

log = logging.getLogger(__name__)

#: Bumped when decoding changes what a cached image holds (2: 16-bit images scaled by their real bit depth, not
#: 65535), so an older store is rebuilt rather than served.
VERSION = 2
#: Pixel bytes per chunk file (the unit of parallelism, resumption and atomicity).
CHUNK_BYTES = 256 * 2**20


class CacheError(RuntimeError):
    """A cache that cannot serve the images asked for; the message says what is missing and how to build it."""


def store_dir(cache_dir: str | os.PathLike, root: str | os.PathLike, size: int, resample: Resample) -> Path:
    """The store of images under ``root`` at ``size`` px with ``resample`` (a changed size is another store)."""
    if str(resample) not in RESAMPLE:
        raise ValueError(f"unknown resample filter {resample!r}; known: {sorted(RESAMPLE)}")
    digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{int(size)}px-{resample}-v{VERSION}-{digest}"


def _key(relpath: str) -> str:
    return os.path.normpath(relpath)


def _fingerprints(paths: Sequence[Path]) -> list[tuple[int, int] | None]:
    """(bytes, mtime_ns) of each file, ``None`` where it cannot be read; threaded (stat releases the GIL)."""

    def one(p: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(p)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    if len(paths) < 4096:
        return [one(p) for p in paths]
    parts = [paths[i : i + 1024] for i in range(0, len(paths), 1024)]  # (a network file system gains most)
    with cf.ThreadPoolExecutor(max_workers=16) as pool:
        return [fp for part in pool.map(lambda ps: [one(p) for p in ps], parts) for fp in part]


# ------------------------------------------------------------------------------------------------- reading
@dataclass
class CachedImages:
    """Reader of one table's images from a store: ``read(i)`` → uint8 (size, size). Picklable, holds no open file."""

    size: int
    chunk_paths: list[str]
    chunk_of: np.ndarray  # (N,) index into chunk_paths
    row_of: np.ndarray  # (N,) row inside that chunk

    def __len__(self) -> int:
        return len(self.row_of)

    def read(self, i: int) -> np.ndarray:
        nbytes = self.size * self.size
        buf = bytearray(nbytes)
        with open(self.chunk_paths[self.chunk_of[i]], "rb", buffering=0) as f:
            f.seek(int(self.row_of[i]) * nbytes)
            if f.readinto(buf) != nbytes:
                raise CacheError(f"{self.chunk_paths[self.chunk_of[i]]}: truncated chunk (row {self.row_of[i]})")
        return np.frombuffer(buf, dtype=np.uint8).reshape(self.size, self.size)


@dataclass
class StoreIndex:
    """Every valid entry of a store: relative path → (chunk, row, source bytes, source mtime_ns)."""

    store: Path
    size: int
    chunks: list[str] = field(default_factory=list)
    entries: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, store: Path, size: int) -> StoreIndex:
        index = cls(store, size)
        chunk_dir = store / "chunks"
        markers = sorted(chunk_dir.glob("*.json")) if chunk_dir.is_dir() else []
        for marker in markers:  # names start with a timestamp: a newer chunk overrides an older one
            try:
                meta = json.loads(marker.read_text())
                data = marker.with_suffix(".u8")
                valid = meta["size"] == size and data.stat().st_size == len(meta["entries"]) * size * size
            except (OSError, ValueError, KeyError) as e:
                log.warning("%s: unreadable chunk marker ignored (%s)", marker, e)
                continue
            if not valid:
                log.warning("%s: chunk does not match its marker; ignored", marker)
                continue
            c = len(index.chunks)
            index.chunks.append(marker.stem)
            for row, (rel, nbytes, mtime) in enumerate(meta["entries"]):
                index.entries[rel] = (c, row, int(nbytes), int(mtime))
        return index

    def lookup(self, table: ImageTable) -> tuple[CachedImages, list[str], list[str]]:
        """Reader for ``table``'s rows plus the relative paths that are missing and those that are stale."""
        chunk_of = np.zeros(len(table), dtype=np.int32)
        row_of = np.zeros(len(table), dtype=np.int64)
        keys = [_key(p) for p in table.paths]
        prints = _fingerprints([table.image_path(i) for i in range(len(table))])
        missing, stale = [], []
        for i, (key, fp) in enumerate(zip(keys, prints, strict=True)):
            entry = self.entries.get(key)
            if entry is None:
                missing.append(key)
            elif fp != entry[2:]:
                stale.append(key)
            else:
                chunk_of[i], row_of[i] = entry[:2]
        paths = [str(self.store / "chunks" / f"{name}.u8") for name in self.chunks]
        return CachedImages(self.size, paths, chunk_of, row_of), missing, stale


def open_cached(
    table: ImageTable,
    cache_dir: str | os.PathLike,
    size: int,
    resample: Resample,
    how_to_build: str = "",
    index: StoreIndex | None = None,
) -> CachedImages:
    """Reader for every row of ``table``; :class:`CacheError` naming what is missing or stale otherwise.

    ``index``: the store's index when already loaded (several tables under one root).
    """
    store = store_dir(cache_dir, table.root, size, resample)
    if index is None or index.store != store:
        index = StoreIndex.load(store, size)
    reader, missing, stale = index.lookup(table)
    if missing or stale:
        parts = []
        if missing:
            parts.append(f"{len(missing)} are not cached (e.g. {missing[0]})")
        if stale:
            parts.append(f"{len(stale)} changed on disk since they were cached (e.g. {stale[0]})")
        raise CacheError(
            f"image cache {store} is incomplete for {table.source} ({len(table)} images at {size} px, "
            f"{resample}): {' and '.join(parts)}. Build or update it with: python -m mlgcn_lt.data.preprocess "
            f"{how_to_build or f'data.cache_dir={cache_dir}'} (the same data=... and data.* overrides as this run)"
        )
    return reader


# ------------------------------------------------------------------------------------------------- writing
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_chunk(store: str, name: str, root: str, relpaths: Sequence[str], size: int, resample: Resample):
    """Decode ``relpaths`` into chunk ``name`` (pixels, fsync, rename, then the marker); returns (done, failures)."""
    chunk_dir = Path(store) / "chunks"
    data, tmp = chunk_dir / f"{name}.u8", chunk_dir / f".{name}.u8.tmp"
    entries: list[list] = []
    failures: list[tuple[str, str]] = []
    try:
        with open(tmp, "wb") as f:
            for rel in relpaths:
                path = os.path.join(root, rel)
                try:
                    st = os.stat(path)  # before reading: a file replaced meanwhile reads as stale later
                    pixels = load_grayscale(path, size, resample).tobytes()
                except (ImageDecodeError, OSError) as e:
                    failures.append((rel, str(e)))
                    continue
                f.write(pixels)
                entries.append([rel, st.st_size, st.st_mtime_ns])
            f.flush()
            os.fsync(f.fileno())
        if entries:
            os.replace(tmp, data)
            _fsync_dir(chunk_dir)
            text = json.dumps({"version": VERSION, "size": size, "resample": resample, "entries": entries})
            atomic_write(data.with_suffix(".json"), lambda f: f.write(text))
            _fsync_dir(chunk_dir)
    finally:
        tmp.unlink(missing_ok=True)
    return len(entries), failures


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise CacheError(f"{store}: another preprocessing run is writing this cache") from e
        yield


def _clean(store: Path, size: int) -> int:
    """Remove leftovers of interrupted runs and chunks whose every image has a newer entry (caller holds the lock)."""
    chunk_dir = store / "chunks"
    removed = 0
    for tmp in chunk_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    for data in chunk_dir.glob("*.u8"):
        if not data.with_suffix(".json").exists():
            data.unlink(missing_ok=True)
            removed += 1
    index = StoreIndex.load(store, size)
    used = {c for c, *_ in index.entries.values()}
    for c, name in enumerate(index.chunks):
        if c not in used:
            (chunk_dir / f"{name}.json").unlink(missing_ok=True)  # marker first: never a marker without pixels
            (chunk_dir / f"{name}.u8").unlink(missing_ok=True)
            removed += 1
    return removed


@dataclass
class BuildReport:
    store: Path
    cached: int  # already valid before this run
    written: int
    failures: list[tuple[str, str]]
    seconds: float


def build_cache(
    relpaths: Iterable[str],
    root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    size: int,
    resample: Resample = "bilinear",
    *,
    workers: int = 0,
    chunk_images: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> BuildReport:
    """Decode every image of ``relpaths`` (under ``root``) not yet validly cached; ``workers`` processes (0: here).

    ``progress(n)`` is called as images complete (e.g. ``tqdm.update``).
    """
    start = time.perf_counter()
    resample = str(resample)  # a Hydra enum member → plain str (picklable)
    root = Path(root).resolve()
    store = store_dir(cache_dir, root, size, resample)
    with _locked(store):
        meta = {"root": str(root), "size": int(size), "resample": resample, "version": VERSION}
        if not (store / "store.json").exists():
            atomic_write(store / "store.json", lambda f: f.write(json.dumps(meta, indent=2)))
        (store / "chunks").mkdir(exist_ok=True)
        _clean(store, size)
        keys = list(dict.fromkeys(_key(p) for p in relpaths))
        index = StoreIndex.load(store, size)
        prints = _fingerprints([root / k for k in keys])
        todo = [k for k, fp in zip(keys, prints, strict=True) if k not in index.entries or index.entries[k][2:] != fp]
        spread = math.ceil(len(todo) / (4 * max(1, workers)))  # several chunks per worker: balance, progress
        per_chunk = chunk_images or max(1, min(CHUNK_BYTES // (size * size), spread))
        stamp = f"{time.time_ns():020d}"
        jobs = [
            (str(store), f"{stamp}-{j:06d}", str(root), todo[s : s + per_chunk], int(size), resample)
            for j, s in enumerate(range(0, len(todo), per_chunk))
        ]
        written, failures = 0, []
        if workers <= 0:
            results: Iterable = (write_chunk(*job) for job in jobs)
            pool = None
        else:
            pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            results = (f.result() for f in cf.as_completed([pool.submit(write_chunk, *job) for job in jobs]))
        try:
            for done, failed in results:
                written += done
                failures += failed
                if progress is not None:
                    progress(done + len(failed))
        except BaseException:
            if pool is not None:  # do not wait for chunks in flight: their markers never get written
                pool.shutdown(wait=False, cancel_futures=True)
            raise
        if pool is not None:
            pool.shutdown()
        _clean(store, size)
    return BuildReport(store, len(keys) - len(todo), written, failures, time.perf_counter() - start)


def table_paths(tables: Iterable[ImageTable]) -> tuple[Path, list[str]]:
    """The common data root of ``tables`` and the union of their image paths (first-seen order)."""
    tables = list(tables)
    roots = {Path(t.root).resolve() for t in tables}
    if len(roots) != 1:
        raise ValueError(f"tables under different roots cannot share a cache store: {sorted(map(str, roots))}")
    return roots.pop(), list(dict.fromkeys(p for t in tables for p in t.paths))
