"""Runs a pipeline config: the driver plans, workers read, run the stages and write (docs/architecture.md).

1. **Plan** (driver, cheap). The source yields :class:`~readers._base.ShardSpec` s: a slice of a big
   annotation file, or a group of input files named without being opened. A big annotation file is
   first streamed once, by one worker task, into per-shard record files under ``<output>/.plan/``
   (its memory is that task's, reported apart); the driver holds the specs only, never a record.
2. **Resume check.** A finished shard is reused only when its recorded input fingerprint equals the
   plan's; otherwise the run stops before any work with one line naming the changed input, unless
   ``--redo-changed`` asks to redo the affected shards.
3. **Execute.** Ray Data: ``from_items(specs)`` -> read (one spec per task) -> one ``map_batches`` per
   stage (CPU stages as tasks, GPU or stateful ones as actor pools) -> write. The writer runs on the
   worker holding the shard's rows and commits the shard atomically (:mod:`writer`); the driver
   receives one small result per shard (counts, or the shard's error) and shows progress. A shard
   that fails is reported with its error while the others commit, and the run exits non-zero listing
   the failed shards. ``--no-ray`` runs the same three functions in this process, shard by shard.
4. **Manifest**: aggregated from the shards' stats files, with the record accounting checked.

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
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import config as cfgmod
from . import faults
from .errors import ConfigError, UserError
from .readers._base import PLAN_DIR, RecordSource, ShardSpec, Source
from .stage import Stage, make_source, make_stage
from .storage import Location, is_uri, join
from .resume import changed_inputs
from .roots import collect_roots
from .shard_tasks import ReadShard, WriteShard, execute_local, execute_ray
from .writer import FORMAT, MANIFEST, RUN_FILE, ShardWriter, shard_name

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
    failed: dict = field(default_factory=dict)  # shard index -> error
    split: dict = field(default_factory=dict)  # how the annotation file was split (time, MB/s, memory)
    plan_lines: list = field(default_factory=list)  # idd run --plan

    def lines(self) -> list[str]:
        out = [f"output: {self.root}"]
        out.append(f"shards: {self.shards_total} ({self.shards_written} written, {self.shards_skipped} already done"
                   f"{f', {len(self.failed)} FAILED' if self.failed else ''}), {self.records} source records, "
                   f"{self.seconds:.1f}s")
        for shard, err in sorted(self.failed.items())[:20]:
            out.append(f"  FAILED shard {shard_name(shard)}: {err}")
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
    d["format"] = FORMAT
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def output_root(cfg: cfgmod.PipelineConfig, out: str | None = None) -> Path | str:
    """``<out>/<name>/<version>``: a Path, or a URI string when ``out`` is one (``s3://bucket/shards``)."""
    return join(out or cfg.writer.out, cfgmod.check_component(cfg.name, "name"),
                cfgmod.check_component(cfg.version, "version"))


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


# -- output folder -------------------------------------------------------------------------------

# What the engine writes at an output root; --overwrite removes these and nothing else.
ENGINE_ENTRIES = ("train", "rejected", PLAN_DIR, "generations", MANIFEST, "CURRENT.json", "filter_report.json",
                  "filter_report", "README.md")


def _read_run_file(loc: Location) -> dict | None:
    try:
        data = json.loads((loc / RUN_FILE).read_text())
        return data if isinstance(data, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def side_inputs(cfg: cfgmod.PipelineConfig) -> dict[str, list[int] | None]:
    """The files stages read beside the records (options marked :func:`~.config.side_input`): path ->
    ``[size, mtime_ns]`` (None when missing; a folder: its files' facts summed)."""
    import dataclasses

    from .stage import stage_class

    out: dict[str, list[int] | None] = {}
    for i, spec in enumerate(cfg.stages):
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            continue
        cls = stage_class(spec["type"], f"stages[{i}]")
        for f in dataclasses.fields(cls.Config):
            value = spec.get(f.name)
            if not f.metadata.get("side_input") or not value:
                continue
            for p in [value] if isinstance(value, str) else list(value):
                loc = Location(p if is_uri(p) else os.path.abspath(os.path.expanduser(str(p))))
                facts = loc.facts()
                if facts is None and loc.is_dir():
                    parts = [(loc / n).facts() or (0, 0) for n in sorted(loc.names())]
                    facts = (sum(x[0] for x in parts), max([x[1] for x in parts], default=0))
                out[str(p)] = list(facts) if facts else None
    return out


def prepare_output(cfg: cfgmod.PipelineConfig, root: Path | str, overwrite: bool) -> None:
    """Create or check the output folder. A folder is only ever written into, or removed by
    ``--overwrite``, when it holds this engine's run file; anything else is refused."""
    fp = config_fingerprint(cfg)
    side = side_inputs(cfg)
    loc = Location(root)
    run_file = loc / RUN_FILE
    if run_file.is_file():
        prev = _read_run_file(loc)
        if prev is None or prev.get("fingerprint") != fp:
            if not overwrite:
                what = "an unreadable run file" if prev is None else "an output of a different config"
                raise ConfigError(f"{root}: holds {what}; pass --overwrite or choose another version/--out")
            log.warning("overwriting %s (config changed)", root)
            remove_output(loc)
        elif overwrite:
            log.warning("overwriting %s (--overwrite)", root)
            remove_output(loc)
        elif "side_inputs" in prev and prev["side_inputs"] != side:
            p = next(k for k in sorted(set(side) | set(prev["side_inputs"]))
                     if side.get(k) != prev["side_inputs"].get(k))
            raise ConfigError(f"{root}: stage input {p} changed since this output was written; pass --overwrite "
                              "to rebuild the output from it")
    elif loc.exists() and (loc.names() or loc.dirs()):
        raise ConfigError(f"{root}: exists and holds files this engine did not write (no {RUN_FILE}); it is "
                          "never written into or removed: choose another --out, name or version")
    loc.mkdir()
    text = json.dumps({"fingerprint": fp, "config": cfgmod.to_dict(cfg), "format": FORMAT, "side_inputs": side},
                      indent=1, sort_keys=True)
    if loc.atomic_rename:
        tmp = loc / f"{RUN_FILE}.tmp-{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(run_file)
    else:
        run_file.write_text(text)
    faults.point("run.runfile")


def _remove_dir(target: Location) -> None:
    import shutil

    if target.local:
        shutil.rmtree(target.path)
    else:
        target.rmtree()


def remove_output(loc: Location) -> None:
    """Remove what the engine wrote at an output root (run file last); anything else stays, with a warning."""
    for name in loc.dirs() + loc.names():
        if name == RUN_FILE:
            continue
        target = loc / name
        if name in ENGINE_ENTRIES or name.startswith((f"{MANIFEST}.tmp", f"{RUN_FILE}.tmp")):
            if target.is_dir():
                _remove_dir(target)
            else:
                target.delete_file()
        else:
            log.warning("%s: not written by this engine, left in place", target)
    (loc / RUN_FILE).delete_file()


# -- the run -------------------------------------------------------------------------------------

def run(cfg: cfgmod.PipelineConfig, *, address: str | None = None, out: str | None = None,
        overwrite: bool = False, use_ray: bool = True, redo_changed: bool = False,
        plan_only: bool = False) -> RunSummary:
    if use_ray and not plan_only and (cluster_address(cfg.ray, address) or "").startswith("ray://"):
        return _run_via_client(cfg, cluster_address(cfg.ray, address), out, overwrite, redo_changed)
    return _run_driver(cfg, address=address, out=out, overwrite=overwrite, use_ray=use_ray,
                       redo_changed=redo_changed, plan_only=plan_only)


def _run_via_client(cfg: cfgmod.PipelineConfig, address: str, out: str | None, overwrite: bool,
                    redo_changed: bool) -> RunSummary:
    """``--address ray://host:10001`` (Ray Client). Ray Data cannot execute from a client driver, so
    the driver's work (planning, collecting shard results) runs as one task on the cluster's head node
    (0 CPUs: it never takes a stage's slot), whose Ray Data job runs the stages and the writers.
    Paths are the cluster's: give absolute paths or URIs (the output best an object-store URI)."""
    init_ray(cfg.ray, address)
    import ray

    target = out or cfg.writer.out
    if not is_uri(target):
        target = str(Path(target).absolute())
    log.info("Ray Client: the run executes on the cluster's head node, output %s", target)
    task = ray.remote(num_cpus=0, max_retries=0, resources={"node:__internal_head__": 0.001})(_remote_driver)
    return ray.get(task.remote(cfg, target, overwrite, redo_changed))


def _remote_driver(cfg: cfgmod.PipelineConfig, out: str, overwrite: bool, redo_changed: bool = False) -> RunSummary:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _run_driver(cfg, address=None, out=out, overwrite=overwrite, use_ray=True, redo_changed=redo_changed,
                       plan_only=False)


def _split_task(source: RecordSource, root: str, per_shard: int) -> dict:
    """Stream a big annotation file into per-shard record files (a worker task: its memory is its own)."""
    t0 = time.perf_counter()
    index = source.split(Location(root), per_shard)
    secs = time.perf_counter() - t0
    size = sum(max(0, f[1]) for f in index.get("inputs", []))
    return {"seconds": round(secs, 3), "input_mb": round(size / 1e6, 2), "first_file_s": index.get("first_file_s"),
            "mb_per_s": round(size / 1e6 / max(secs, 1e-9), 1), "records": index["records"],
            "shards": len(index["shards"]),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _run_driver(cfg: cfgmod.PipelineConfig, *, address: str | None, out: str | None, overwrite: bool,
                use_ray: bool, redo_changed: bool = False, plan_only: bool = False) -> RunSummary:
    t0 = time.perf_counter()
    source, stages = build(cfg)
    root = output_root(cfg, out)
    loc = Location(root)
    summary = RunSummary(root=root)
    if plan_only:
        return _print_plan(cfg, source, loc, summary)
    prepare_output(cfg, root, overwrite or cfg.writer.overwrite)
    writer = ShardWriter(root, output=cfg.name, version=cfg.version)
    writer.clean_attempts()
    rps = cfg.writer.records_per_shard

    roots = collect_roots(cfg, source)
    max_rows = 1
    for st in stages:
        max_rows *= max(1, st.max_rows_per_input())
    reader = ReadShard(source)
    sink = WriteShard(str(loc), cfg.name, cfg.version, roots, max_rows)
    done = writer.done_shards()
    started: set[int] = set()

    def check_changed(specs: list[ShardSpec], final: bool) -> None:
        nonlocal done
        changed, stale, what = changed_inputs(source, writer, loc, specs, done if final else done & {s.index for s in specs})
        if changed or stale:
            if not redo_changed:
                raise UserError(f"{root}: {what}; {len(changed) + len(stale)} finished shards were made from other "
                                "inputs. Rerun with --redo-changed to redo them, or --overwrite to start over")
            log.warning("%s: redoing %d changed shards, removing %d stale ones", what, len(changed), len(stale))
            for i in changed + stale:
                writer.remove_shard(i)
            done -= set(changed) | set(stale)

    def execute(wave: list[ShardSpec]) -> None:
        pending = [s for s in wave if s.index not in done and s.index not in started]
        started.update(s.index for s in pending)
        if not pending:
            return
        results = (execute_ray(cfg, stages, pending, reader, sink, lambda: init_ray(cfg.ray, address)) if use_ray
                   else execute_local(stages, pending, reader, sink))
        bar = tqdm(total=len(pending), desc=f"{cfg.name} shards", unit="shard")
        for res in results:
            bar.update(1)
            if res.get("ok"):
                summary.shards_written += 1
            else:
                summary.failed[res["shard"]] = res.get("error") or "unknown error"
                log.error("shard %s failed: %s", shard_name(res["shard"]), res.get("error"))
        bar.close()
        missing = {s.index for s in pending} - set(writer.done_shards()) - set(summary.failed)
        for i in sorted(missing):
            summary.failed[i] = "no result came back for this shard (its rows were lost between read and write)"

    # 1. plan. A big annotation file is split once, by a worker. With Ray the shards whose record files
    # are ready run while the split goes on (a first wave), so the first shard never waits for the
    # whole file; the rest run as a second wave once the split is complete.
    if isinstance(source, RecordSource) and source.split_index(loc, rps) is None:
        fp = source.inputs_fingerprint(rps)[0]
        if done:  # shards of an earlier, interrupted run: reusable only when made from these inputs
            check_changed([ShardSpec(index=i, fingerprint=fp, label=f"shard {i}") for i in sorted(done)], final=False)
        log.info("splitting %s into per-shard record files (one pass, streamed)", source.name)
        if use_ray:
            init_ray(cfg.ray, address)
            import ray

            opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 2}
            if cfg.ray.split_memory:
                opts["memory"] = cfg.ray.split_memory
            ref = ray.remote(**opts)(_split_task).remote(source, str(loc), rps)
            # a short split finishes inside the grace period and runs as one wave; a long one starts the
            # shards whose record files are complete, then the rest
            first: list[ShardSpec] = []
            t_split = time.perf_counter()
            while True:
                ready, _ = ray.wait([ref], timeout=0.25)
                if ready:
                    break
                if time.perf_counter() - t_split >= cfg.ray.first_wave_after_s:
                    first = [s for s in source.partial_plan(loc, fp) if s.index not in done]
                    if first:
                        break
            if first and not ray.wait([ref], timeout=0)[0]:
                log.info("first wave: %d shards after %.1fs of splitting, while the split goes on", len(first),
                         time.perf_counter() - t_split)
                execute(first)
            summary.split = ray.get(ref)
        else:
            summary.split = _split_task(source, str(loc), rps)
        log.info("split: %(records)d records into %(shards)d shards, %(input_mb).1f MB in %(seconds).1fs "
                 "(%(mb_per_s).1f MB/s, worker peak RSS %(peak_rss_mb).0f MB, first record file after "
                 "%(first_file_s)ss)", summary.split)
    specs = source.plan(loc, rps)
    summary.shards_total = len(specs)
    if not specs:
        raise UserError(f"source {source.name}: no input records (check source paths and patterns)")

    # 2. resume: finished shards are reused only when their inputs are the plan's
    check_changed(specs, final=True)
    summary.shards_skipped = len([s for s in specs if s.index in done])
    log.info("%d shards (%s per shard: %d); %d already done, %d to write", len(specs), source.unit, rps,
             summary.shards_skipped, len([s for s in specs if s.index not in done and s.index not in started]))

    # 3. execute: workers read, run the stages and write
    execute(specs)

    if summary.shards_written and (loc / "CURRENT.json").exists():
        log.warning("%s has been re-filtered (CURRENT.json names a later generation): the %d shards written now are "
                    "in generation 0 only; run idd filter again to carry them into a new generation", root,
                    summary.shards_written)

    # 4. manifest, with the accounting checked (no shard is in flight now: leftovers of killed attempts go,
    # and so do the record files of splits of earlier inputs)
    writer.clean_attempts()
    if isinstance(source, RecordSource) and not summary.failed:
        keep = source.split_dir(loc, source.inputs_fingerprint(rps)[0]).name
        for d in (loc / PLAN_DIR).dirs():
            if d.startswith("records-") and d != keep:
                _remove_dir(loc / PLAN_DIR / d)
    split_index = source.split_index(loc, rps) if isinstance(source, RecordSource) else None
    summary.manifest = writer.write_manifest(
        config=cfgmod.to_dict(cfg),
        extra={"name": cfg.name, "version": cfg.version, "mixture_weight": cfg.writer.mixture_weight,
               "source_stats": (split_index or {}).get("reader") or {}, "roots": roots,
               "shards_planned": len(specs), "complete": not summary.failed,
               "failed_shards": {shard_name(k): v for k, v in sorted(summary.failed.items())},
               "unit": source.unit, "records_per_shard": rps},
    )
    if not summary.manifest.get("source_stats"):
        summary.manifest["source_stats"] = summary.manifest.get("reader_stats", {})
    summary.records = summary.manifest.get("records", 0)
    if split_index is not None and not summary.failed and summary.records != split_index["records"]:
        raise RuntimeError(f"{root}: record accounting does not add up: the source gave {split_index['records']} "
                           f"records, the shards hold {summary.records}")
    if not summary.failed:
        for st in stages:
            st.finalize(root)
    summary.seconds = time.perf_counter() - t0
    return summary


def _print_plan(cfg: cfgmod.PipelineConfig, source: Source, loc: Location, summary: RunSummary) -> RunSummary:
    """``idd run --plan``: the shards, their inputs and what is done, without running anything."""
    rps = cfg.writer.records_per_shard
    writer = ShardWriter(loc)
    if isinstance(source, RecordSource) and source.split_index(loc, rps) is None:
        summary.plan_lines = [f"{source.name}: the annotation file is not split yet; the run first streams it "
                              f"once into shards of {rps} records ({', '.join(source.input_files()[:3])})"]
        return summary
    specs = source.plan(loc, rps)
    done = writer.done_shards() if loc.exists() else set()
    changed, stale, what = changed_inputs(source, writer, loc, specs, done) if done else ([], [], "")
    lines = [f"{len(specs)} shards of up to {rps} {source.unit}s; {len(done & {s.index for s in specs})} done, "
             f"{len(changed)} changed, {len(stale)} stale{f' ({what})' if what else ''}"]
    for s in specs:
        state = "changed" if s.index in changed else "done" if s.index in done else "todo"
        lines.append(f"  {shard_name(s.index)}  {state:7s}  {s.label}  inputs {s.fingerprint[:12]}")
    summary.plan_lines = lines
    summary.shards_total = len(specs)
    return summary


