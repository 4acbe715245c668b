"""Reading checkpoints safely (``weights_only``), with one clear error naming the file and what it really is.

Every tool that reads a checkpoint (``eval.py``, ``submit``, ``report``, cRT's ``model.decoupled.init_from``) goes
through :func:`read_checkpoint`: a file that is not a checkpoint, a truncated one, or a plain state dict (e.g. the
authors' release) is refused naming the file, and never with advice to load it with ``weights_only=False`` (which
would run whatever code a pickle holds).
"""

from __future__ import annotations

import errno
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

IMPORT_HINT = "import it with `python -m mlgcn_lt.import_release`"
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A file that cannot be used as this project's checkpoint; the message names the file and why."""


def _describe_unreadable(path: Path, error: BaseException) -> str:
    """What an unreadable file is, from its first bytes and the zip structure (torch checkpoints are zip archives)."""
    head = path.read_bytes()[:64] if path.stat().st_size else b""
    if not head:
        return "is empty (0 bytes): not a checkpoint"
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (
                f"is truncated or damaged ({path.stat().st_size} bytes, the end of the archive is missing: "
                "an interrupted copy or download?)"
            )
        if isinstance(error, pickle.UnpicklingError):
            return (
                "holds Python objects other than tensors and plain containers, which are not loaded for safety "
                "(loading them could run arbitrary code): not a checkpoint written by this project"
            )
        return f"is a damaged checkpoint archive ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
    try:
        head.decode("utf-8")
        kind = "a text file"
    except UnicodeDecodeError:
        kind = "binary data of another format"
    return f"is not a PyTorch checkpoint ({kind}, starting {head[:16]!r})"


def read_checkpoint(path: str | Path, *, what: str = "checkpoint", lightning: bool = True) -> dict[str, Any]:
    """Load ``path`` with ``torch.load(weights_only=True)`` on CPU and check it is this project's checkpoint.

    ``what`` names the option the path came from in errors (e.g. ``model.decoupled.init_from``). With ``lightning``
    the file must be a Lightning checkpoint of :class:`~mlgcn_lt.training.module.MLGCNModule` (``state_dict`` +
    hyper-parameters).
    Raises :class:`FileNotFoundError` or :class:`CheckpointError`, each naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read: {e}") from None
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError... for foreign files
        raise CheckpointError(f"{what} {path} {_describe_unreadable(path, e)}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{what} {path} holds a {type(ckpt).__name__}, not a checkpoint (a dict)")
    if not lightning:
        return ckpt
    state = ckpt.get("state_dict")
    if state is None:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(
                f"{what} {path} is a plain state dict ({len(ckpt)} tensors), not a training checkpoint of this "
                f"project; if it is the authors' release, {IMPORT_HINT}"
            )
        raise CheckpointError(
            f"{what} {path} is not a training checkpoint of this project: no 'state_dict' (keys {sorted(ckpt)[:8]})"
        )
    if "pytorch-lightning_version" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(
            f"{what} {path} holds a 'state_dict' but no Lightning hyper-parameters: not a checkpoint written by this "
            f"project (the authors' release format?); {IMPORT_HINT}"
        )
    return ckpt


def write_failure(error: BaseException) -> OSError | None:
    """The ``OSError`` behind a failed checkpoint write (torch wraps it in ``RuntimeError: ... unexpected pos``)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return e
        e = e.__cause__ or e.__context__
    return None
