"""Typed configuration: YAML pipeline files mapped onto dataclasses, with ``--set`` overrides.

Every config section is a dataclass. :func:`build` checks unknown keys and value types and names
the offending key (``stages[1].radius_frac: expected float, got 'big'``) so that a config error stops
the run before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError


def side_input() -> dict:
    """Field metadata marking a stage option that names files the stage reads beside the records (a
    captions file, a template folder): the run file records their size and mtime, and a rerun over a
    changed one is refused in one line naming it (the shards' own inputs are checked per shard)."""
    return {"side_input": True}


def rng(lo: float | None = None, hi: float | None = None) -> dict:
    """Field metadata bounding a number: ``field(default=1, metadata=rng(1))`` (>= 1),
    ``metadata=rng(0, 1)`` (a ratio). :func:`build` checks it and names the key."""
    return {"min": lo, "max": hi}


@dataclass
class WriterConfig:
    out: str = "shards"  # output root; the output lands in <out>/<pipeline name>/<version>/
    # source units per shard: records of an annotation file, or input items (an image with its json,
    # a frame pair) of a folder dataset; a unit may give several rows
    records_per_shard: int = field(default=256, metadata=rng(1))
    overwrite: bool = False  # refuse to resume into an output written with a different config unless set
    # default sampling weight of this output in a mixture (idd mix may override)
    mixture_weight: float = field(default=1.0, metadata=rng(0))


@dataclass
class RayConfig:
    address: str | None = None  # None: embedded local cluster (ray.init()); "auto" or "ray://host:port" joins one
    num_cpus: int | None = None  # only for the embedded cluster
    # only for the embedded cluster: Ray's default takes 30% of memory, too much beside the workers
    object_store_memory: int = field(default=2 * 1024**3, metadata=rng(78643200))
    # largest Ray block: a shard travels as one block from reader to writer, so this bounds a shard's bytes
    max_block_bytes: int = field(default=2 * 1024**3, metadata=rng(1 << 20))
    split_memory: int | None = None  # bytes of heap reserved for the task splitting a big annotation file
    # while a big annotation file is being split, shards whose record files are complete start after this
    # many seconds (a short split just finishes first and the whole plan runs as one wave)
    first_wave_after_s: float = field(default=1.0, metadata=rng(0))
    # Ray Data reserves half of the cluster for each operator by default; with a source and one or two
    # stages that leaves CPUs idle (measured: 1 of 2 map tasks running). Off unless a pipeline needs it.
    reserve_op_resources: bool = False
    runtime_env: dict | None = None  # passed to ray.init (working_dir, py_modules, env_vars)
    # removed options, accepted so older configs still load (the shard is the unit of work now)
    preserve_order: bool | None = None
    block_records: int | None = None


@dataclass
class PipelineConfig:
    name: str
    source: dict
    stages: list = field(default_factory=list)
    writer: WriterConfig = field(default_factory=WriterConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    version: str = "v1"
    seed: int = 0

    def __post_init__(self) -> None:
        # name and version become folders under --out: single safe path components, never ".." or "/x"
        for key in ("name", "version"):
            check_component(getattr(self, key), key)


_SAFE_COMPONENT = __import__("re").compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_component(value: Any, where: str) -> str:
    """``value`` as one safe folder name (letters, digits, ``._-``, not starting with a dot)."""
    if not isinstance(value, str) or not _SAFE_COMPONENT.match(value) or ".." in value:
        raise ConfigError(f"{where}: {value!r} must be one folder name (letters, digits, '.', '_', '-'; "
                          "no '/', no '..', not starting with '.')")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats. Returns the value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return value
    return value


def build(cls: type, data: Any, where: str = "config") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
        _check_range(kwargs[name], fields[name].metadata, f"{where}.{name}")
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required key is missing")
    return cls(**kwargs)


def _check_range(value: Any, meta: Any, where: str) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is None and hi is None) or value is None or isinstance(value, bool):
        return
    vals = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for v in vals:
        if not isinstance(v, (int, float)):
            continue
        if v != v or (lo is not None and v < lo) or (hi is not None and v > hi):
            bound = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                     else f">= {lo:g}" if lo is not None else f"<= {hi:g}")
            raise ConfigError(f"{where}: must be {bound}, got {v!r}")


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``--set a.b.c=value`` overrides; values parse as YAML. Stages are addressed by index
    (``stages.0.x``) or by their ``type`` (``stages.render_keypoints.x``)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value")
        dotted, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parts = dotted.strip().split(".")
        node: Any = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                idx = _list_index(node, part, dotted)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"--set {dotted}: '{parts[i - 1]}' is not a section")
    return raw


def _list_index(node: list, part: str, dotted: str) -> int:
    if part.isdigit():
        idx = int(part)
        if idx >= len(node):
            raise ConfigError(f"--set {dotted}: there is no stage {idx}")
        return idx
    matches = [i for i, s in enumerate(node) if isinstance(s, dict) and s.get("type") == part]
    if len(matches) != 1:
        raise ConfigError(f"--set {dotted}: no single stage of type '{part}'")
    return matches[0]


def load_yaml(path: str | os.PathLike) -> dict:
    from . import storage

    p = path if storage.is_uri(path) else Path(path)
    if not storage.exists(p, "file"):
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(storage.read_text(p))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}:{line} invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def load_pipeline_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    raw = apply_overrides(load_yaml(path), overrides or [])
    return build(PipelineConfig, raw, where=Path(path).name)


def check_path(value: str | None, where: str, *, kind: Literal["file", "dir", "any"] = "any") -> None:
    """Raise a one-line ConfigError when a configured path does not exist."""
    if value is None:
        return
    from . import storage

    if not storage.exists(value, kind):
        raise ConfigError(f"{where}: {kind if kind != 'any' else 'path'} not found: {value}")
