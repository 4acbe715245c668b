"""The typed blocks of a data config (``conf/data/_base.yaml``): how to read the tables (``columns``), how to load
batches (``loader``), what to do with unreadable images (``bad_images``), how to carve missing splits (``split``)
and how many head / tail classes to report (``groups``).

Each block is a frozen dataclass; the structured-config schema is generated from the fields, so a misspelt key
(``data.bad_images.polcy``) or an unknown choice (``data.bad_images.policy=drop``) fails at compose time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from omegaconf import DictConfig, OmegaConf

from mlgcn_lt.data.tables import TableError, TableFormat, UncertainPolicy

BadImagePolicy = Literal["error", "skip"]
ImageCheck = Literal["none", "header", "full"]


@dataclasses.dataclass(frozen=True)
class ColumnsConfig:
    """How to read the label tables. ``classes``: the expected class list (CXR-LT, NIH; ``None``: the official
    list of the format, or the table's own for NIH without it); ``uncertain``: CheXpert's ``-1`` is an ``error`` or
    mapped to ``ignore`` (unknown) / ``zero`` / ``one``; ``path_column``, ``label_columns``, ``id_columns``,
    ``group_column`` (the patient, never split across splits): the columns of ``format: csv``; ``image_dir``: NIH's
    image folder under ``root``."""

    classes: tuple[str, ...] | None = None
    uncertain: UncertainPolicy = "error"
    path_column: str | None = None
    label_columns: tuple[str, ...] | None = None
    id_columns: tuple[str, ...] = ()
    group_column: str | None = None
    image_dir: str = "images"

    def reader_options(self, fmt: TableFormat) -> dict[str, Any]:
        """Keyword arguments of :func:`~mlgcn_lt.data.tables.read_table` for ``fmt`` (what that reader reads)."""
        if fmt == "cxr_lt":
            opts: dict[str, Any] = {"uncertain": self.uncertain}
            if self.classes is not None:
                opts["classes"] = list(self.classes)
            return opts
        if fmt == "nih":
            opts = {"image_dir": self.image_dir}
            if self.classes is not None:
                opts["classes"] = list(self.classes)
            return opts
        if fmt == "csv":
            if not self.path_column or not self.label_columns:
                raise TableError("data=csv needs data.columns.path_column and data.columns.label_columns")
            return {
                "path_column": self.path_column,
                "label_columns": list(self.label_columns),
                "id_columns": list(self.id_columns),
                "group_column": self.group_column,
                "uncertain": self.uncertain,
            }
        raise TableError(f"unknown data.format {fmt!r}; known: ['csv', 'cxr_lt', 'nih']")


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """DataLoader settings. ``eval_batch_size``: val / dev / test batches (``None``: ``batch_size``);
    ``pin_memory`` only takes effect with CUDA; ``persistent_workers`` and ``prefetch_factor`` only with workers."""

    eval_batch_size: int | None = None
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int | None = 2


@dataclasses.dataclass(frozen=True)
class BadImagesConfig:
    """Unreadable images (docs/reliability.md). ``check`` at setup: ``none``, ``header`` (open every file: fast)
    or ``full`` (decode every image: slow); ``policy``: ``error`` stops naming every bad file, ``skip`` drops them
    (never replaced by a made-up image); both list them in ``<report_dir>/bad_images.csv`` (``None``: no list)."""

    policy: BadImagePolicy = "error"
    check: ImageCheck = "header"
    report_dir: str | None = None

    def __post_init__(self) -> None:
        _check_choice("data.bad_images.policy", self.policy, BadImagePolicy)
        _check_choice("data.bad_images.check", self.check, ImageCheck)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Fractions carved out of ``train_csv`` by patient when ``val_csv`` (``test_csv``) is null; ``seed``: the
    carving's seed (``None``: ``data.seed``)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class GroupSizes:
    """Number of head and tail classes (by training count); ``None``: 9/26 of the classes, as the paper's 9 of 26."""

    head: int | None = None
    tail: int | None = None


Block = TypeVar("Block")


def as_block(cls: type[Block], value: Block | Mapping[str, Any] | None) -> Block:
    """``value`` as the block ``cls``: itself, or built from a mapping (a composed config node; enums as strings)."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")
    hints = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown field(s) {unknown}; known: {list(hints)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def _check_choice(key: str, value: Any, choices: Any) -> None:
    allowed = choices.__args__
    if value not in allowed:
        raise ValueError(f"{key}={value!r}; expected one of {list(allowed)}")


#: Flat keys of data configs written before the blocks (a run's saved ``config.yaml``) → where they live now.
LEGACY_KEYS = {
    **{k: f"columns.{k}" for k in ("classes", "uncertain", "path_column", "label_columns", "id_columns")},
    **{k: f"columns.{k}" for k in ("group_column", "image_dir")},
    **{k: f"loader.{k}" for k in ("eval_batch_size", "pin_memory", "persistent_workers", "prefetch_factor")},
    "on_bad_image": "bad_images.policy",
    "validate_images": "bad_images.check",
    "report_dir": "bad_images.report_dir",
}


def upgrade_legacy_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """A plain data config with the flat keys of old saved configs (:data:`LEGACY_KEYS`) moved into their blocks."""
    out = dict(data)
    for old, new in LEGACY_KEYS.items():
        if old in out:
            block, field = new.split(".")
            out[block] = {**(out.get(block) or {}), field: out.pop(old)}
    return out
