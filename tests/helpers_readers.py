"""Reading a source the way the engine does, for reader tests: a file-group source through its plan
(``plan()`` then ``read(spec)`` per shard), a record source through ``records()``."""

from __future__ import annotations

from instructdiffusion_data.readers._base import FileGroupSource
from instructdiffusion_data.storage import Location


def rows_of(source, per_shard: int = 7) -> list[dict]:
    if isinstance(source, FileGroupSource):
        return [r for spec in source.plan(Location("."), per_shard) for r in source.read(spec)]
    return list(source.records())
