"""The stage interface, and lookup of stages and sources by name (docs/architecture.md).

A *stage* is a callable class: ``__init__(config)`` stores a typed config and loads nothing;
``setup()`` loads models once per worker, on the first batch (so the object pickles cheaply);
``__call__(batch) -> batch`` takes and returns a ``pyarrow.Table`` of :mod:`schema` rows and is what
Ray Data's ``map_batches`` calls. Subclasses implement :meth:`Stage.process` on parsed rows, and can
be tested without Ray by calling them on a batch.

A *source* (:mod:`readers._base`) plans shards and reads the records of one shard on a worker.

Stages and sources are found by convention: ``type: render_keypoints`` in a pipeline config is the
``STAGE`` attribute of ``instructdiffusion_data.stages.render_keypoints``; ``type: coco_keypoints``
the ``SOURCE`` of ``instructdiffusion_data.readers.coco_keypoints``. A stage imports models and
renderers, never another stage.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import logging
import pkgutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from . import config as cfgmod
from .errors import ConfigError, RecordError
from .readers._base import FileGroupSource, RecordSource, SourceConfig  # noqa: F401 (re-exported)
from .readers._base import Source as _SourceBase
from .schema import Row, drop, rows_to_table, table_to_rows

log = logging.getLogger(__name__)


@dataclass
class StageConfig:
    """Resources every stage declares; stage configs subclass this and add their own fields."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 16
    concurrency: int | None = None  # actor pool size; None runs the stage as stateless Ray tasks
    memory: int | None = None  # bytes of heap per worker, for Ray's scheduler


class Stage(abc.ABC):
    name: ClassVar[str] = "stage"
    Config: ClassVar[type[StageConfig]] = StageConfig
    # Rows already dropped are passed through untouched unless a stage asks to see them (filters do).
    process_dropped: ClassVar[bool] = False

    def max_rows_per_input(self) -> int:
        """The most rows this stage makes from one input row (1: it changes rows in place; a renderer
        making ``variants_per_record`` variants says so). The writer checks the rows of every record
        against the product over the pipeline's stages: more rows means a stage duplicated some."""
        return 1

    def __init__(self, config: StageConfig | dict | None = None, *, seed: int = 0):
        self.config = cfgmod.build(self.Config, config if config is not None else {}, where=self.name)
        self.seed = seed
        self._ready = False
        self.validate()

    # -- to override -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the config (paths, ranges) and raise ConfigError; runs on the driver before work."""

    def setup(self) -> None:
        """Load models; runs once per worker before the first batch."""

    def finalize(self, root: Path) -> None:
        """Runs once on the driver after the output's manifest is written (reports over the output)."""

    @abc.abstractmethod
    def process(self, rows: list[Row]) -> list[Row]:
        """Turn a list of rows into a list of rows (same rows changed, or expanded into several)."""

    # -- Ray Data entry point ----------------------------------------------------------------
    @property
    def resources(self) -> StageConfig:
        return self.config

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = table_to_rows(batch) if isinstance(batch, pa.Table) else list(batch)
        return rows_to_table(self.run_rows(rows))

    def run_rows(self, rows: list[Row]) -> list[Row]:
        """One batch of parsed rows through the stage (what :meth:`__call__` does between the Arrow
        conversions): set up on first use, process the kept rows, pass the dropped ones through."""
        if not self._ready:
            self.setup()
            self._ready = True
        active = [r for r in rows if r["keep"] or self.process_dropped]
        passed = [r for r in rows if not (r["keep"] or self.process_dropped)]
        t0 = time.perf_counter()
        out = self._safe_process(active)
        log.debug("%s: %d rows in %.3fs", self.name, len(active), time.perf_counter() - t0)
        return out + passed

    def _safe_process(self, rows: list[Row]) -> list[Row]:
        """Run ``process``; when the batch raises, rerun row by row and drop only the failing rows
        with the error as their reason, so one bad row never stops a run."""
        if not rows:
            return []
        try:
            return self.process(rows)
        except Exception:  # noqa: BLE001 - isolate below, row by row
            if len(rows) == 1:
                return [self._failed(rows[0])]
        out: list[Row] = []
        for r in rows:
            try:
                out.extend(self.process([dict(r, meta=dict(r["meta"]))]))
            except Exception:  # noqa: BLE001 - recorded as the row's drop reason
                out.append(self._failed(r))
        return out

    def _failed(self, row: Row) -> Row:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, RecordError):
            return drop(row, f"{self.name}: {exc.reason}", file=exc.file, record=exc.record, field=exc.field,
                        **getattr(exc, "detail", {}))
        log.warning("%s raised on %s: %s", self.name, row.get("key"), exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return drop(row, f"{self.name}: error {type(exc).__name__}", error=str(exc)[:500])

    # -- helpers for subclasses --------------------------------------------------------------
    def rng(self, *parts: Any) -> np.random.Generator:
        """A generator seeded from the pipeline seed, this stage and the given parts (e.g. the key):
        the same row draws the same numbers whatever the batching or worker."""
        h = hashlib.sha256("\x00".join([str(self.seed), self.name, *map(str, parts)]).encode()).digest()
        return np.random.default_rng(int.from_bytes(h[:8], "little"))


def child(parent: Row, **changes: Any) -> Row:
    """A new row derived from ``parent`` (keeps the runner's bookkeeping columns and meta)."""
    row = dict(parent)
    row["meta"] = dict(parent.get("meta") or {})
    row.update(changes)
    return row


# User sources written against the first interface (``records()`` only) keep working: ``stage.Source``
# is the record-stream source; new readers pick RecordSource or FileGroupSource from readers._base.
Source = RecordSource


# -- lookup by convention --------------------------------------------------------------------

def _available(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def _lookup(package: str, attr: str, type_name: str, where: str) -> type:
    if isinstance(type_name, str) and ":" in type_name:
        # a user's own class: "my_package.my_module:MyStage"
        mod_name, _, cls_name = type_name.partition(":")
        try:
            return getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{where}.type: cannot import {type_name} ({e})") from None
    if not isinstance(type_name, str) or not type_name.isidentifier():
        raise ConfigError(f"{where}.type: expected a name, got {type_name!r}")
    if type_name not in _available(package):
        raise ConfigError(f"{where}.type: unknown '{type_name}' (available: {', '.join(_available(package))})")
    module = importlib.import_module(f"{package}.{type_name}")
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"{where}.type: module {package}.{type_name} defines no {attr}")
    return cls


def stage_class(type_name: str, where: str = "stages") -> type[Stage]:
    return _lookup("instructdiffusion_data.stages", "STAGE", type_name, where)


def source_class(type_name: str, where: str = "source") -> type[_SourceBase]:
    return _lookup("instructdiffusion_data.readers", "SOURCE", type_name, where)


def make_stage(spec: dict, index: int, seed: int) -> Stage:
    where = f"stages[{index}]"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a 'type'")
    body = {k: v for k, v in spec.items() if k != "type"}
    cls = stage_class(spec["type"], where)
    try:
        return cls(cfgmod.build(cls.Config, body, where=f"{where}({spec['type']})"), seed=seed)
    except ConfigError:
        raise


def make_source(spec: dict, seed: int) -> _SourceBase:
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError("source: expected a mapping with a 'type'")
    body = {k: v for k, v in spec.items() if k != "type"}
    cls = source_class(spec["type"])
    return cls(cfgmod.build(cls.Config, body, where=f"source({spec['type']})"), seed=seed)
