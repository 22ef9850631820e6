"""The worker side of a run: read one shard's records, run the stages on them, write and commit the
shard (docs/architecture.md, "Runner"). :func:`execute_ray` runs a whole shard per task when the stages
allow it (:class:`ShardTask`) and chains them as Ray Data operators otherwise; :func:`execute_local`
runs the whole-shard task in this process."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any, Callable, Iterator

import pyarrow as pa

from .config import PipelineConfig
from .readers._base import RecordSource, ShardSpec, Source, file_facts
from .roots import relativize, relativize_text
from .schema import Row, new_row, normalize_rows, rows_to_table, table_to_rows
from .stage import Stage
from .writer import ShardWriter, shard_name

log = logging.getLogger(__name__)


def map_stage(ds: Any, stage: Stage) -> Any:
    res = stage.resources
    kwargs: dict[str, Any] = {"batch_format": "pyarrow", "batch_size": res.batch_size, "num_cpus": res.num_cpus,
                              "zero_copy_batch": False}
    if res.num_gpus:
        kwargs["num_gpus"] = res.num_gpus
    if res.memory:
        kwargs["memory"] = res.memory
    if res.concurrency or res.num_gpus:
        return ds.map_batches(type(stage), fn_constructor_kwargs={"config": stage.config, "seed": stage.seed},
                              concurrency=res.concurrency or 1, **kwargs)
    return ds.map_batches(stage, **kwargs)


def run_stages_local(stages: list[Stage], rows: list[Row]) -> list[Row]:
    """Run the stages in this process, without Ray (tests, debugging): same code path per batch."""
    return stages_on_rows(stages, normalize_rows(rows))


def stages_on_rows(stages: list[Stage], rows: list[Row]) -> list[Row]:
    """Each stage over the rows in slices of its ``batch_size``; between two steps the rows the next one
    would read back from a table between Ray operators (:func:`normalize_rows`), without building it."""
    for st in stages:
        bs = max(1, st.resources.batch_size)
        out: list[Row] = []
        for i in range(0, len(rows), bs):
            out.extend(st.run_rows(rows[i:i + bs]))
        rows = normalize_rows(out)
    return rows


def fusable(stages: list[Stage]) -> bool:
    """Whether a shard can be read, processed and written in one task: every stage runs as plain CPU
    tasks (no GPU, no actor pool that holds a model)."""
    return all(not st.resources.num_gpus and not st.resources.concurrency for st in stages)


class ReadShard:
    """Reads the records of one shard spec (one row per spec in, the shard's records out)."""

    def __init__(self, source: Source):
        self.source = source

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [self.read(ShardSpec.from_json(t)) for t in batch.column("spec").to_pylist()]
        return pa.concat_tables(tables)

    def read(self, spec: ShardSpec) -> pa.Table:
        return rows_to_table(self.read_rows(spec))

    def read_rows(self, spec: ShardSpec) -> list[Row]:
        """The shard's records as the first stage sees them (see :func:`normalize_rows`), numbered for
        the writer's accounting; a shard that cannot be read is one failed row carrying the error."""
        self.source.stats = Counter()
        try:
            rows = list(self.source.read(spec))
            error = None
        except Exception as e:  # noqa: BLE001 - the shard fails with its error; the others go on
            log.exception("reading shard %s failed", shard_name(spec.index))
            rows, error = [], f"reading {spec.label} failed: {type(e).__name__}: {e}"
        info = {"inputs": {"fingerprint": spec.fingerprint, "label": spec.label,
                           "files": [[p, *f] for p, *f in _facts_of(spec)]},
                "reader": dict(self.source.stats)}
        if error or not rows:
            row = new_row(key=f"failed-shard-{spec.index}", keep=False, drop_reason=error or "no records",
                          drop_class="shard failed")
            row.update(_shard=spec.index, _rec=-1, _nrec=-1, _sinfo=json.dumps({"error": error or "the shard read no records"}))
            return normalize_rows([row])
        for i, r in enumerate(rows):
            r["_shard"], r["_rec"], r["_nrec"] = spec.index, i, len(rows)
            r["_sinfo"] = None
        rows[0]["_sinfo"] = json.dumps(info, sort_keys=True)
        # a record source's base reader parses its record file into exactly such rows already
        return rows if type(self.source).read is RecordSource.read else normalize_rows(rows)


def _facts_of(spec: ShardSpec) -> list:
    if spec.items is None:
        return []
    return [file_facts(p) for it in spec.items for p in it]


class WriteShard:
    """Checks and commits whole shards from the rows of a block; returns one result row per shard."""

    def __init__(self, root: str, output: str, version: str, roots: dict[str, str], max_rows_per_record: int):
        self.root, self.output, self.version = root, output, version
        self.roots, self.max_rows = roots, max_rows_per_record

    def __call__(self, batch: pa.Table) -> pa.Table:
        by: dict[int, list[Row]] = {}
        for r in table_to_rows(batch):
            by.setdefault(int(r["_shard"]), []).append(r)
        results = [json.dumps(self.write(shard, rows), sort_keys=True) for shard, rows in sorted(by.items())]
        return pa.table({"result": pa.array(results, pa.string())})

    def write(self, shard: int, rows: list[Row]) -> dict:
        bad = [r for r in rows if r.get("_rec") == -1]
        if bad:
            return {"shard": shard, "ok": False, "error": json.loads(bad[0]["_sinfo"] or "{}").get("error", "read failed")}
        nrec = int(rows[0]["_nrec"])
        per_rec = Counter(int(r["_rec"]) for r in rows)
        missing = [i for i in range(nrec) if i not in per_rec]
        if missing:
            return {"shard": shard, "ok": False,
                    "error": f"{len(missing)} of {nrec} records reached the writer without any row (first: record "
                             f"{missing[0]}): the shard arrived in pieces (raise ray.max_block_bytes or lower "
                             "writer.records_per_shard) or a stage lost rows"}
        over = [(i, n) for i, n in per_rec.items() if n > self.max_rows]
        if over:
            return {"shard": shard, "ok": False,
                    "error": f"record {over[0][0]} gave {over[0][1]} rows, more than the stages declare "
                             f"({self.max_rows}): a stage duplicated rows"}
        info = next((json.loads(r["_sinfo"]) for r in rows if r.get("_rec") == 0 and r.get("_sinfo")), {})
        info["records"] = nrec
        info["inputs"] = relativize(info.get("inputs") or {}, self.roots)
        from .licences import provenance_for

        for r in rows:
            m = r.get("meta") or {}
            if r.get("dataset") and m.get("record_id") is not None:  # licence + source id per row
                m["provenance"] = {**provenance_for(r["dataset"], m["record_id"], image=m.get("image_id")),
                                   **(m.get("provenance") or {})}
            r["meta"] = relativize(m, self.roots)
            if r.get("drop_detail"):
                r["drop_detail"] = [relativize_text(d, self.roots) for d in r["drop_detail"]]
            if r.get("drop_reason"):
                r["drop_reason"] = relativize_text(r["drop_reason"], self.roots)
        writer = ShardWriter(self.root, output=self.output, version=self.version)
        try:
            stats = writer.write_shard(shard, rows, info)
        except OSError as e:
            from .cli import describe_os_error

            return {"shard": shard, "ok": False,
                    "error": describe_os_error(e, [self.root]) or f"{e.strerror or e}: {e.filename or self.root}"}
        except Exception as e:  # noqa: BLE001 - reported per shard; the other shards commit
            log.exception("writing shard %s failed", shard_name(shard))
            return {"shard": shard, "ok": False, "error": f"{type(e).__name__}: {e}"}
        return {"shard": shard, "ok": True, "records": nrec,
                "rows": {k: v["rows"] for k, v in stats.items()}}


class ShardTask:
    """One whole shard in one task: read its records, run the stages on them in batches and write it.
    Rows stay Python objects from the reader to the writer (no Arrow tables in between, nothing in
    Ray's object store but the spec in and the shard's result out). Used for every pipeline whose stages
    are plain CPU tasks, and for every pipeline without Ray."""

    def __init__(self, reader: ReadShard, stages: list[Stage], sink: WriteShard):
        self.reader, self.stages, self.sink = reader, stages, sink

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = [json.dumps(self.run(ShardSpec.from_json(t)), sort_keys=True) for t in batch.column("spec").to_pylist()]
        return pa.table({"result": pa.array(results, pa.string())})

    def run(self, spec: ShardSpec) -> dict:
        try:
            rows = stages_on_rows(self.stages, self.reader.read_rows(spec))
        except Exception as e:  # noqa: BLE001 - a stage bug fails its shard, reported; the others commit
            log.exception("shard %s failed in the stages", shard_name(spec.index))
            return {"shard": spec.index, "ok": False, "error": f"stages failed: {type(e).__name__}: {e}"}
        return self.sink.write(spec.index, rows)


def execute_local(stages: list[Stage], pending: list[ShardSpec], reader: ReadShard, sink: WriteShard) -> Iterator[dict]:
    """Shard by shard in this process: the same read, stage and write functions as on Ray."""
    task = ShardTask(reader, stages, sink)
    for spec in pending:
        yield task.run(spec)


def execute_ray(cfg: PipelineConfig, stages: list[Stage], pending: list[ShardSpec], reader: ReadShard,
                sink: WriteShard, start_ray: Callable[[], None]) -> Iterator[dict]:
    """Ray Data: one spec per read task, one ``map_batches`` per stage, the writer last; yields each
    shard's result as it arrives."""
    start_ray()
    import ray

    ctx = ray.data.DataContext.get_current()
    # The writer needs every row of a shard in one call: no order to keep, and blocks never cut.
    ctx.execution_options.preserve_order = False
    ctx.op_resource_reservation_enabled = cfg.ray.reserve_op_resources
    ctx.target_max_block_size = cfg.ray.max_block_bytes
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"spec": s.to_json()} for s in pending], override_num_blocks=len(pending))
    if fusable(stages):  # read, stages and write of a shard in one task
        memory = max((st.resources.memory or 0 for st in stages), default=0)
        ds = ds.map_batches(ShardTask(reader, stages, sink), batch_size=1, batch_format="pyarrow",
                            zero_copy_batch=False, num_cpus=max([1.0, *(st.resources.num_cpus for st in stages)]),
                            **({"memory": memory} if memory else {}))
    else:  # stages with GPUs or actor pools are operators of their own
        ds = ds.map_batches(reader, batch_size=1, batch_format="pyarrow", zero_copy_batch=False, num_cpus=1)
        for st in stages:
            ds = map_stage(ds, st)
        ds = ds.map_batches(sink, batch_size=None, batch_format="pyarrow", zero_copy_batch=False, num_cpus=1)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for res in batch.column("result").to_pylist():
            yield json.loads(res)
