"""The auditor page: browse what the engine kept and dropped, see why, label samples, pick alignment data.

``catalog`` finds the outputs under a root and indexes their parquet sidecars in DuckDB, ``images``
reads image members straight out of the tars by the sidecar offsets (with a disk thumbnail cache),
``labels`` is the append-only SQLite label store, ``alignment`` exports alignment picks as a regular
output, and ``app`` is the FastAPI application serving the page in ``static/``.
"""
