"""Run directories that survive being killed: one directory per command, locked while in use, resumable.

``hydra.run.dir`` resolves through :func:`resolve_run_dir`: the same command (same overrides) started again after
a crash or SIGKILL gets back its unfinished directory (no ``metrics.json``) and ``train()`` resumes from
``checkpoints/last.ckpt``; a directory in use by a live process (an ``flock`` held for the process lifetime,
released by the kernel even on SIGKILL) or a finished one is never reused, so two runs never share a directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mlgcn_lt.utils.checkpoints import write_failure
from mlgcn_lt.utils.io import atomic_write

KEY_FILE = "run_key.txt"
LOCK_FILE = ".run.lock"
_HELD: dict[str, IO[str]] = {}  # run dir -> open lock file, kept for the life of the process
ORPHAN_WAIT_S = 30.0  # how long to wait for a dead run's orphaned loader workers to release its lock


def _try_lock(run_dir: Path) -> bool:
    """Take the run directory's exclusive lock for this process (False if a live process holds it)."""
    key = str(run_dir.resolve())
    if key in _HELD:
        return True
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held open on purpose)
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            # Loader workers forked by a SIGKILLed run inherit its lock and hold it until they notice their parent
            # is gone (seconds): if the process that took the lock is dead, wait for them rather than treat the
            # run as live (the same command would otherwise start a new directory instead of resuming).
            if _owner_alive(f) or time.monotonic() > deadline:
                f.close()
                return False
            time.sleep(0.2)
    f.seek(0)
    f.truncate()
    f.write(f"{os.uname().nodename} {os.getpid()}\n")
    f.flush()
    _HELD[key] = f
    return True


def _owner_alive(f: IO[str]) -> bool:
    """Whether the process recorded in an open lock file (``<host> <pid>``) is alive (True when unknown)."""
    f.seek(0)
    parts = f.read().split()
    if len(parts) != 2 or parts[0] != os.uname().nodename or not parts[1].isdigit():
        return True  # another host, or written by something else: assume live
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_key(overrides: str) -> str:
    """A stable identity of a command: the sorted overrides Hydra reports (``hydra.job.override_dirname``)."""
    return overrides or "<no overrides>"


def resolve_run_dir(base: str, overrides: str = "") -> str:
    """The unfinished, unlocked run of the same command under ``base``, else a new ``<time>_<random>`` directory."""
    base_dir = Path(base)
    key = run_key(overrides)
    if base_dir.is_dir():
        for candidate in sorted(base_dir.iterdir(), reverse=True):  # newest first
            marker = candidate / KEY_FILE
            if not marker.is_file() or (candidate / "metrics.json").exists():
                continue
            if marker.read_text() == key and _try_lock(candidate):
                return str(candidate)
    while True:
        candidate = base_dir / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"
        if not candidate.exists() and _try_lock(candidate):
            atomic_write(candidate / KEY_FILE, lambda f: f.write(key))
            return str(candidate)


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def resume_checkpoint(out: Path, explicit: str | None, resume: bool = True) -> str | None:
    """``explicit`` if given; else the run's own ``checkpoints/last.ckpt`` when resuming an unfinished run."""
    if explicit:
        return explicit
    last = out / "checkpoints" / "last.ckpt"
    if resume and last.is_file() and not (out / "metrics.json").exists():
        return str(last)
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary sibling, fsynced, then renamed: a kill at any moment leaves the previous
    checkpoint or the new one, never a truncated file; a full disk raises a clear error and keeps the previous."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        try:
            atomic_write(path, lambda f: torch.save(checkpoint, f), mode="wb")
        except (OSError, RuntimeError) as e:
            cause = write_failure(e)
            torn = isinstance(e, RuntimeError) and ("unexpected pos" in str(e) or "PytorchStreamWriter" in str(e))
            if cause is None and not torn:
                raise
            code = cause.errno if cause is not None else errno.EIO
            reason = {
                errno.ENOSPC: "disk full",
                errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file-size limit reached",
            }.get(code, "the file could not be written completely (disk full or a file-size limit?)")
            raise OSError(
                code,
                f"{reason} while writing checkpoint {path}; the previous checkpoint is intact "
                "(free space or raise the limit, then run the same command again to resume)",
            ) from e
