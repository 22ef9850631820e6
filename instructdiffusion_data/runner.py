"""Runs a pipeline config on Ray Data: source -> stages -> shard writer.

The driver reads the source's record rows (annotations only, no pixels) in a fixed order and cuts
them into shards of ``writer.records_per_shard`` records. Finished shards are skipped. The remaining
records become a Ray dataset; each stage is one ``map_batches`` (CPU stages as tasks, GPU or stateful
stages as actor pools sized by the stage's declared resources). Ray Data runs with
``preserve_order``, so the rows of shard *s* are complete once a later shard's rows arrive; the driver
then writes shard *s* (sorted by key) and moves on. Memory on the driver is bounded by a few shards,
whatever the size of the dataset.

On a cluster (docs/cluster.md) the same code joins it: ``--address``, ``ray.address`` or
``RAY_ADDRESS`` (what ``ray job submit`` sets); with a ``ray://`` (Ray Client) address the driver's
work runs as a task on the head node, since Ray Data cannot execute from a client. The output may be
an object-store URI (:mod:`storage`); the writer then commits data objects first, markers last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from . import config as cfgmod
from .errors import ConfigError
from .schema import Row, rows_to_table, table_to_rows
from .stage import Source, Stage, make_source, make_stage
from .storage import Location, is_uri, join
from .writer import RUN_FILE, ShardWriter

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    root: Path | str  # a folder, or the URI of an output on an object store
    shards_total: int = 0
    shards_skipped: int = 0
    shards_written: int = 0
    records: int = 0
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"output: {self.root}"]
        out.append(f"shards: {self.shards_total} ({self.shards_written} written, {self.shards_skipped} already done)"
                   f", {self.records} source records, {self.seconds:.1f}s")
        for split, info in self.manifest.get("splits", {}).items():
            tasks = ", ".join(f"{k}={v}" for k, v in info["tasks"].items()) or "-"
            out.append(f"  {split:9s} {info['rows']:7d} rows  [{tasks}]")
        reasons = self.manifest.get("splits", {}).get("rejected", {}).get("drop_reasons", {})
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]:
            out.append(f"    dropped {n:6d}  {reason}")
        ver = self.manifest.get("splits", {}).get("train", {}).get("verified", {})
        rver = self.manifest.get("splits", {}).get("rejected", {}).get("verified", {})
        checked = ver.get("checked", 0) + rver.get("checked", 0)
        if checked:
            passed = ver.get("passed", 0) + rver.get("passed", 0)
            out.append(f"  verified {passed}/{checked} rendered targets ({100.0 * passed / checked:.2f}%)")
        return out


def config_fingerprint(cfg: cfgmod.PipelineConfig) -> str:
    """What decides the bytes of the output: everything but where it goes and how Ray runs."""
    d = cfgmod.to_dict(cfg)
    d.pop("ray", None)
    d.get("writer", {}).pop("out", None)
    d.get("writer", {}).pop("overwrite", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def output_root(cfg: cfgmod.PipelineConfig, out: str | None = None) -> Path | str:
    """``<out>/<name>/<version>``: a Path, or a URI string when ``out`` is one (``s3://bucket/shards``)."""
    return join(out or cfg.writer.out, cfg.name, cfg.version)


def build(cfg: cfgmod.PipelineConfig) -> tuple[Source, list[Stage]]:
    """Instantiate source and stages; every config error surfaces here, before any work."""
    source = make_source(cfg.source, cfg.seed)
    stages = [make_stage(spec, i, cfg.seed) for i, spec in enumerate(cfg.stages)]
    return source, stages


def cluster_address(rcfg: cfgmod.RayConfig, address: str | None = None) -> str | None:
    """The cluster to join: ``--address``, else ``ray.address`` of the config, else ``RAY_ADDRESS``
    (set by ``ray job submit`` for its entrypoint, and by users); None starts an embedded Ray."""
    return address or rcfg.address or os.environ.get("RAY_ADDRESS") or None


def init_ray(rcfg: cfgmod.RayConfig, address: str | None = None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(rcfg, address)
    kwargs: dict[str, Any] = {"log_to_driver": True}
    runtime_env = getattr(rcfg, "runtime_env", None)
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address:
        # Joining a cluster: its nodes bring their own CPUs, GPUs and object stores. Inside a Ray job
        # (`ray job submit`) the job's runtime_env (working_dir, pip, env_vars) applies to every worker.
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # address="local": always a fresh embedded instance, never a stale `ray start` cluster of this machine
        ray.init(address="local", num_cpus=rcfg.num_cpus, object_store_memory=rcfg.object_store_memory,
                 include_dashboard=False, **kwargs)


def _map_stage(ds: Any, stage: Stage) -> Any:
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
    table = rows_to_table(rows)
    for st in stages:
        bs = max(1, st.resources.batch_size)
        table = pa.concat_tables([st(table.slice(i, bs)) for i in range(0, table.num_rows, bs)] or [table])
    return table_to_rows(table)


def prepare_output(cfg: cfgmod.PipelineConfig, root: Path | str, overwrite: bool) -> None:
    fp = config_fingerprint(cfg)
    loc = Location(root)
    run_file = loc / RUN_FILE
    if run_file.is_file():
        prev = json.loads(run_file.read_text())
        if prev.get("fingerprint") != fp:
            if not overwrite:
                raise ConfigError(f"{root}: holds an output of a different config; pass --overwrite "
                                  "or choose another version/--out")
            log.warning("overwriting %s (config changed)", root)
            _remove_tree(loc)
    elif overwrite and loc.exists():
        _remove_tree(loc)
    loc.mkdir()
    run_file.write_text(json.dumps({"fingerprint": fp, "config": cfgmod.to_dict(cfg)}, indent=1, sort_keys=True))


def _remove_tree(loc: Location) -> None:
    if loc.local:
        shutil.rmtree(loc.path)
    else:
        loc.rmtree()


def run(cfg: cfgmod.PipelineConfig, *, address: str | None = None, out: str | None = None,
        overwrite: bool = False, use_ray: bool = True) -> RunSummary:
    if use_ray and (cluster_address(cfg.ray, address) or "").startswith("ray://"):
        return _run_via_client(cfg, cluster_address(cfg.ray, address), out, overwrite)
    return _run_driver(cfg, address=address, out=out, overwrite=overwrite, use_ray=use_ray)


def _run_via_client(cfg: cfgmod.PipelineConfig, address: str, out: str | None, overwrite: bool) -> RunSummary:
    """``--address ray://host:10001`` (Ray Client). Ray Data cannot execute from a client driver, so
    the driver's whole work (reading the source, writing the shards) runs as one task on the
    cluster's head node (0 CPUs: it never takes a stage's slot), whose Ray Data job runs the stages.
    Paths are the cluster's: give absolute paths or URIs (the output best an object-store URI)."""
    init_ray(cfg.ray, address)
    import ray

    target = out or cfg.writer.out
    if not is_uri(target):
        target = str(Path(target).absolute())
    log.info("Ray Client: the run executes on the cluster's head node, output %s", target)
    task = ray.remote(num_cpus=0, max_retries=0, resources={"node:__internal_head__": 0.001})(_remote_driver)
    return ray.get(task.remote(cfg, target, overwrite))


def _remote_driver(cfg: cfgmod.PipelineConfig, out: str, overwrite: bool) -> RunSummary:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _run_driver(cfg, address=None, out=out, overwrite=overwrite, use_ray=True)


def _run_driver(cfg: cfgmod.PipelineConfig, *, address: str | None, out: str | None, overwrite: bool,
                use_ray: bool) -> RunSummary:
    t0 = time.perf_counter()
    source, stages = build(cfg)
    root = output_root(cfg, out)
    prepare_output(cfg, root, overwrite or cfg.writer.overwrite)
    writer = ShardWriter(root)
    done = writer.done_shards()

    rps = cfg.writer.records_per_shard
    if rps < 1:
        raise ConfigError(f"writer.records_per_shard: must be >= 1, got {rps}")
    log.info("reading source %s", source.name)
    pending: dict[int, list[Row]] = {}
    n_records = 0
    for i, rec in enumerate(source.iter_limited()):
        n_records += 1
        shard = i // rps
        if shard in done:
            continue
        rec["_rec"], rec["_shard"] = i, shard
        pending.setdefault(shard, []).append(rec)
    n_shards = (n_records + rps - 1) // rps
    summary = RunSummary(root=root, shards_total=n_shards, records=n_records,
                         shards_skipped=len([s for s in done if s < n_shards]))
    log.info("%d records in %d shards; %d already done, %d to write", n_records, n_shards,
             summary.shards_skipped, len(pending))

    if pending:
        if use_ray:
            summary.shards_written = _run_ray(cfg, stages, pending, writer, address)
        else:
            for shard, recs in tqdm(sorted(pending.items()), desc="shards", unit="shard"):
                writer.write_shard(shard, run_stages_local(stages, recs))
                summary.shards_written += 1
    summary.manifest = writer.write_manifest(
        config=cfgmod.to_dict(cfg),
        extra={"name": cfg.name, "version": cfg.version, "mixture_weight": cfg.writer.mixture_weight,
               "source_stats": source.stats},
    )
    for st in stages:
        st.finalize(root)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_ray(cfg: cfgmod.PipelineConfig, stages: list[Stage], pending: dict[int, list[Row]],
             writer: ShardWriter, address: str | None) -> int:
    init_ray(cfg.ray, address)
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = cfg.ray.preserve_order
    ctx.op_resource_reservation_enabled = cfg.ray.reserve_op_resources
    step = max(1, cfg.ray.block_records)
    tables = [rows_to_table(recs[i:i + step]) for _, recs in sorted(pending.items()) for i in range(0, len(recs), step)]
    ds = ray.data.from_arrow(tables)
    for st in stages:
        ds = _map_stage(ds, st)

    buffers: dict[int, list[Row]] = {}
    written = 0
    high = -1
    bar = tqdm(total=len(pending), desc="shards written", unit="shard")
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in table_to_rows(batch):
            buffers.setdefault(row["_shard"], []).append(row)
            high = max(high, row["_shard"])
        # Output comes in input order and records of a later shard never precede earlier ones: every
        # shard below the highest seen is complete.
        for shard in sorted(s for s in buffers if s < high):
            writer.write_shard(shard, buffers.pop(shard))
            written += 1
            bar.update(1)
    for shard in sorted(buffers):
        writer.write_shard(shard, buffers.pop(shard))
        written += 1
        bar.update(1)
    bar.close()
    missing = set(pending) - set(writer.done_shards())
    if missing:
        raise RuntimeError(f"shards {sorted(missing)[:5]} produced no rows; the source rows were lost in a stage")
    return written
