"""Read an offline W&B run (``wandb/offline-run-*/run-*.wandb``) without syncing it: summary, config, history.

Offline, W&B writes no ``wandb-summary.json``; the run is a log of ``wandb_internal_pb2.Record`` protobufs in the
LevelDB log format: a 7-byte file header, then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32 of type
and data, little-endian length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4). wandb 0.31 ships no reader for it.

    python -m mlgcn_lt.wandb_offline <run dir or offline-run-* dir>     # prints the summary as JSON
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER_SIZE = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_chunks(data: bytes) -> Iterator[bytes]:
    """Whole records of a LevelDB-style log, joined from their chunks; checks each chunk's CRC."""
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (no ':W&B' header)")
    pos, pending = HEADER_SIZE, b""
    while pos + CHUNK_HEADER.size <= len(data):
        if BLOCK_SIZE - pos % BLOCK_SIZE < CHUNK_HEADER.size:  # block trailer: zero padding
            pos += BLOCK_SIZE - pos % BLOCK_SIZE
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        chunk = data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        pos += CHUNK_HEADER.size + length
        if kind == 0:  # padding
            continue
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) != crc:
            break  # a run still being written (or killed) ends with a partial chunk
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def iter_records(path: str | Path) -> Iterator[Any]:
    """``wandb_internal_pb2.Record`` messages of a ``run-*.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    for chunk in iter_chunks(Path(path).read_bytes()):
        yield pb.Record.FromString(chunk)


def _set(tree: dict[str, Any], item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    """What an offline run holds, as the W&B server would show it after ``wandb sync``."""

    path: Path  # the offline-run-* directory
    run: dict[str, Any] = field(default_factory=dict)  # name, group, job_type, tags, project
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metric_defs: list[Any] = field(default_factory=list)  # define_metric records
    finished: bool = False  # the exit record is there: the file is complete

    def tables(self, key: str = "") -> list[Path]:
        """Table files (``files/media/table/**.table.json``) whose logged key starts with ``key``, oldest first."""
        root = self.path / "files" / "media" / "table"
        files = sorted(root.rglob("*.table.json"), key=lambda p: int(p.name.split("_")[-2]))
        return [p for p in files if p.relative_to(root).as_posix().startswith(key)]


def find_offline_runs(save_dir: str | Path) -> list[Path]:
    """The ``offline-run-*`` directories under ``<save_dir>/wandb`` (or ``save_dir`` itself), oldest first."""
    save_dir = Path(save_dir)
    if save_dir.name.startswith("offline-run-"):
        return [save_dir]
    return sorted((save_dir / "wandb").glob("offline-run-*"))


def read_offline_run(path: str | Path, timeout: float = 10.0) -> OfflineRun:
    """Replay the records of the latest offline run (``offline-run-*`` dir or the run dir holding ``wandb/``).

    W&B's service may still be writing the file after ``wandb.finish()`` returns: waits up to ``timeout`` seconds
    for the run's exit record (then returns what is there, ``finished`` False).
    """
    runs = find_offline_runs(path)
    if not runs:
        raise FileNotFoundError(f"no wandb/offline-run-* under {path}")
    deadline = time.monotonic() + timeout
    while not (out := _replay(runs[-1])).finished and time.monotonic() < deadline:
        time.sleep(0.1)
    return out


def _replay(path: Path) -> OfflineRun:
    out = OfflineRun(path)
    (file,) = path.glob("run-*.wandb")
    for record in iter_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.run = {"name": r.display_name, "group": r.run_group, "job_type": r.job_type, "project": r.project}
            out.run["tags"] = list(r.tags)
            for item in r.config.update:
                _set(out.config, item)
        elif kind == "config":
            for item in record.config.update:
                _set(out.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(out.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            out.history.append(row)
        elif kind == "metric":
            out.metric_defs.append(record.metric)
        elif kind == "exit":
            out.finished = True
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the summary of an offline run as JSON."""
    parser = argparse.ArgumentParser(prog="python -m mlgcn_lt.wandb_offline", description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default=".", help="a run directory or a wandb/offline-run-* directory")
    args = parser.parse_args(argv)
    run = read_offline_run(args.run)
    print(json.dumps({"path": str(run.path), **run.run, "summary": run.summary}, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
