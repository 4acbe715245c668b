"""Structured-config schemas generated from the signatures of the classes the configs instantiate.

For every ``conf/<group>/<option>.yaml`` whose ``_target_`` names a class or function, a dataclass with one typed
field per configurable parameter is stored in Hydra's ConfigStore as ``schema/<group>/<option>``; the YAML lists
it first in its defaults. A misspelt key, a value of the wrong type or an unknown choice (``Literal`` parameters
become enums) then fails at compose time, naming the key and the valid choices.

Parameters without a default that the YAML does not set (``stats``, ``labels``, ``in_features``…) are injected by
the code at build time and are not part of the schema; values of types OmegaConf cannot check are typed ``Any``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import yaml
from hydra.core.config_store import ConfigStore
from hydra.utils import get_object

_PRIMITIVES = (int, float, bool, str)
#: Parameters the code always passes itself (unless a YAML sets them): kept out of schemas and composed configs.
_INJECTED = frozenset(
    {
        "stats",
        "logger",
        "callbacks",
        "label_vectors",
        "pooling",
        "attention",
        "restore",
        "plugins",
        "seed",
        "num_replicas",
        "rank",
    }
)
_META = {"_partial_": bool, "_recursive_": bool, "_convert_": str}
#: Keys a config group adds beside its target's parameters: (type, default; ``MISSING``: required). The code that
#: instantiates the group reads and removes them first: ``model.scheduler.interval`` (when Lightning steps the
#: learning-rate scheduler), ``data.max_epochs`` (the epoch budget of the data set; ``trainer.max_epochs`` reads it).
GROUP_KEYS: dict[str, dict[str, tuple[Any, Any]]] = {
    "model/scheduler": {"interval": (Literal["epoch", "step"], "epoch")},
    "data": {"max_epochs": (int, dataclasses.MISSING)},
}


def split_group_keys(group: str, cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``group`` config (e.g. ``data``, ``model/scheduler``) split into what its target takes and the group's own
    keys (:data:`GROUP_KEYS`, their defaults filled in where the config leaves them out)."""
    own = GROUP_KEYS.get(group, {})
    args = {k: v for k, v in cfg.items() if k not in own}
    keys = {k: cfg.get(k, default) for k, (_, default) in own.items() if k in cfg or default is not MISSING}
    return args, keys


@functools.cache
def _enum_for(values: tuple[str, ...]) -> type[enum.Enum]:
    return enum.StrEnum("Choice_" + "_".join(v.replace("-", "_") for v in values), {v: v for v in values})


def _field_type(tp: Any) -> Any:
    """A type OmegaConf understands, or ``Any`` when it cannot check it."""
    if tp is inspect.Parameter.empty or tp is Any:
        return Any
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return _enum_for(tuple(args))
        return Any
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and (inner := _field_type(rest[0])) is not Any:
            return Optional[inner] if len(args) > 1 else inner  # noqa: UP045 (OmegaConf needs Optional)
        return Any
    if tp in _PRIMITIVES or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return tp
    if tp is Path:
        return str
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        item = args[0] if args else Any
        item = _field_type(item)
        return list[item] if item in _PRIMITIVES else list[Any]
    if origin in (dict, Mapping) or tp is dict:
        return Any  # nested configs (e.g. a loss inside a loss) merge into Any, not into Dict[str, Any]
    if dataclasses.is_dataclass(tp):
        return _overridable(tp)
    return Any


@functools.cache
def _overridable(tp: type) -> type:
    """The schema of a dataclass-typed parameter (a block such as ``data.augment`` or ``data.bad_images``): a mutable
    copy (OmegaConf marks a frozen dataclass's node read-only, so no override could set ``data.augment.kind``) whose
    fields are typed as OmegaConf can check them (``Literal`` choices become enums, tuples lists)."""
    hints = typing.get_type_hints(tp)
    fields = []
    for f in dataclasses.fields(tp):
        ftype = _field_type(hints.get(f.name, Any))
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        default = _default(value, ftype) if value is not dataclasses.MISSING else dataclasses.MISSING
        fields.append(
            (f.name, ftype, default if isinstance(default, dataclasses.Field) else dataclasses.field(default=default))
        )
    return dataclasses.make_dataclass(tp.__name__ + "Schema", fields)


def _default(value: Any, ftype: Any) -> Any:
    if value is inspect.Parameter.empty or value is dataclasses.MISSING:
        return dataclasses.MISSING
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list | dict):
        return dataclasses.field(default_factory=functools.partial(type(value), value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and isinstance(ftype, type):
        values = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return dataclasses.field(default_factory=functools.partial(ftype, **values))  # the (mutable) schema copy
    if isinstance(ftype, type) and issubclass(ftype, enum.Enum) and value is not None:
        return ftype(value)
    return value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def schema_for(
    target: str,
    keys_in_yaml: Sequence[str] = (),
    meta: dict[str, Any] | None = None,
    extra: Mapping[str, tuple[Any, Any]] | None = None,
) -> type | None:
    """A dataclass schema for ``target``'s keyword parameters (``None`` when it takes ``**kwargs``).

    ``meta`` holds the YAML's instantiation flags (``_partial_``, ``_recursive_``, ``_convert_``); ``extra`` the
    group's own keys (:data:`GROUP_KEYS`).
    """
    meta = meta or {}
    obj = get_object(target)
    fn = obj.__init__ if inspect.isclass(obj) else obj
    # A class that inherits ``nn.Module.__init__(*args, **kwargs)`` takes no options at all.
    sig = inspect.Signature() if fn is torch.nn.Module.__init__ else inspect.signature(obj)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: fall back to unchecked values
        hints = {}
    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default=target))]
    fields += [(k, t, dataclasses.field(default=meta[k])) for k, t in _META.items() if k in meta]
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or name == "self":
            continue
        ftype = _field_type(hints.get(name, p.annotation if not isinstance(p.annotation, str) else Any))
        if name not in keys_in_yaml and (p.default is inspect.Parameter.empty or name in _INJECTED):
            continue  # injected at run time (e.g. ``stats``, ``labels``, ``in_features``)
        default = _default(p.default, ftype)
        fields.append(
            (
                name,
                ftype,
                default if isinstance(default, dataclasses.Field) else dataclasses.field(default=default),
            )
        )
    for name, (tp, default) in (extra or {}).items():
        ftype = _field_type(tp)
        fields.append((name, ftype, dataclasses.field(default=_default(default, ftype))))
    cls_name = target.rsplit(".", 1)[-1] + "Schema"
    return dataclasses.make_dataclass(cls_name, fields, kw_only=True)


def _yaml_keys(data: dict[str, Any]) -> list[str]:
    """Keys a YAML sets itself or through its defaults list (``- backbone: resnet18`` sets ``backbone``)."""
    keys = [k for k in data if not k.startswith("_") and k != "defaults"]
    for entry in data.get("defaults", []) or []:
        for k in entry if isinstance(entry, dict) else [entry]:
            group, _, package = k.split(" ")[-1].partition("@")
            if package and not package.startswith("_"):
                keys.append(package.split(".")[0])  # `- /model/loss/bce@classification` sets `classification`
            elif isinstance(entry, dict) and not package and not group.startswith("/"):
                keys.append(group.split("/")[0])  # `- backbone: resnet18` sets `backbone`
    return keys


def schema_name(conf_dir: Path, yaml_path: Path) -> str:
    """``schema/<group>/<option>`` for ``conf/<group>/<option>.yaml``."""
    return "schema/" + yaml_path.relative_to(conf_dir).with_suffix("").as_posix()


def register_schemas(conf_dir: str | Path) -> list[str]:
    """Store a schema for every YAML under ``conf_dir`` that has a top-level ``_target_``; return their names."""
    conf_dir = Path(conf_dir)
    store = ConfigStore.instance()
    names = []
    for path in sorted(conf_dir.rglob("*.yaml")):
        if "local" in path.relative_to(conf_dir).parts:
            continue
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict) or "_target_" not in data:
            continue
        name = schema_name(conf_dir, path)
        group, _, option = name.rpartition("/")
        extra = GROUP_KEYS.get(group.removeprefix("schema/"))
        schema = schema_for(data["_target_"], _yaml_keys(data), {k: data[k] for k in _META if k in data}, extra)
        if schema is None:
            continue
        store.store(group=group, name=option, node=schema)
        names.append(name)
    return names
