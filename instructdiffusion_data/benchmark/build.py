"""``idd benchmark build``: the editing benchmark of the paper (section 4.4) as a shard output.

Per sample: the source image (``src``), its caption (BLIP-2, or the given/annotation caption in the
weight-free profile), the instruction (``txt``), the caption of the edited image (an LLM writes it; the
offline rule without an endpoint) and the category (remove / add / replace). Written with the engine's
writer (:mod:`..writer`), so the output has the shard format every other output has
(docs/shard-format.md): ``train/`` the usable samples, ``rejected/`` the lines and samples that could not
be used, each with its reason class and details (file, line, field).

**Split.** Every sample is in one of two halves, decided by its key alone: ``align`` when
``sha256("<seed>\\0<key>")`` read as a fraction is below ``align_fraction`` (default 0.5), ``eval``
otherwise. Candidates for human alignment come from ``align``; metrics are reported on ``eval``. A
sample keeps its half when others are added or removed, and a rebuild with the same seed gives the same
halves (and the same bytes). The halves are written to separate shards: ``align`` first, then ``eval``;
``manifest.json`` → ``benchmark.splits.<half>`` lists their tars, rows and categories, and every row's
``meta.bench_split`` says its half. :func:`split_tars` and :func:`read_samples` read one half.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from .. import config as cfgmod
from ..config import rng
from ..errors import ConfigError, UserError
from ..schema import Row, drop, make_key, new_row
from .captions import (LLM_FAILED, LLM_REJECTED, NO_SOURCE_CAPTION, TargetCaptionConfig, check_target_caption,
                       edit_objects, rule_target_caption, target_caption_messages)
from .inputs import TASK_OF, BadLine, BenchItem, read_jsonl, read_output

log = logging.getLogger(__name__)

FORMAT = "instructdiffusion-data/benchmark/1"
SPLITS = ("align", "eval")
UNREADABLE = "benchmark: image unreadable"


@dataclass
class CaptionerConfig:
    backend: Literal["annotations", "blip2"] = "annotations"  # annotations: the weight-free profile
    model: str = "Salesforce/blip2-opt-2.7b"  # blip2: hub id or local directory
    local_files_only: bool = False
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    caption_batch_size: int = field(default=16, metadata=rng(1))
    max_new_tokens: int = field(default=30, metadata=rng(1))
    prompt: str | None = None


@dataclass
class BenchmarkConfig:
    name: str = "editbench"
    version: str = "v1"
    out: str = "shards"  # the output lands in <out>/<name>/<version>/
    seed: int = 0
    images: str | None = None  # folder the JSONL's image paths are relative to (default: the JSONL's folder)
    jsonl: str | None = None  # {image, instruction, category} per line (benchmark/inputs.py)
    from_output: str | None = None  # or: the editing rows of an existing output
    limit: int | None = field(default=None, metadata=rng(1))  # from_output: at most this many (chosen by key hash)
    align_fraction: float = field(default=0.5, metadata=rng(0, 1))
    max_side: int = field(default=512, metadata=rng(16))  # source images larger than this are resized (JPEG)
    jpeg_quality: int = field(default=95, metadata=rng(1, 100))
    samples_per_shard: int = field(default=256, metadata=rng(1))
    strict: bool = False  # a bad JSONL line stops the build (one line naming file and line) instead of a rejected row
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    target_caption: TargetCaptionConfig = field(default_factory=TargetCaptionConfig)

    def __post_init__(self) -> None:
        for key in ("name", "version"):
            cfgmod.check_component(getattr(self, key), key)


def load_config(path: str | None, overrides: list[str] | None = None, **given) -> BenchmarkConfig:
    """The config from a YAML file (optional), ``--set`` overrides, then the command's own options."""
    raw = cfgmod.load_yaml(path) if path else {}
    raw = cfgmod.apply_overrides(raw, overrides or [])
    raw.update({k: v for k, v in given.items() if v is not None})
    return cfgmod.build(BenchmarkConfig, raw, where=Path(path).name if path else "benchmark")


def bench_split(key: str, seed: int, align_fraction: float) -> str:
    """``align`` or ``eval`` for a sample key (see module docstring)."""
    u = int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "big") / 2**64
    return "align" if u < align_fraction else "eval"


# -- building rows -----------------------------------------------------------------------------

def _source_image(data: bytes, cfg: BenchmarkConfig, rid: str) -> bytes:
    """The bytes written as ``src``: the file's own when it is a JPEG/PNG within ``max_side``."""
    from .. import imageio

    rgb = imageio.decode(data, record=rid)
    h, w = rgb.shape[:2]
    scale = imageio.fit_scale(h, w, cfg.max_side)
    if scale == 1.0 and imageio.sniff_ext(data) in ("jpg", "png"):
        return data
    return imageio.encode_jpeg(imageio.resize(rgb, scale) if scale != 1.0 else rgb, cfg.jpeg_quality)


def _bad_row(bad: BadLine, cfg: BenchmarkConfig) -> Row:
    row = new_row(key=make_key(cfg.name, f"line-{bad.line}", "bad"), task="edit", dataset=cfg.name,
                  meta={"record_id": f"line-{bad.line}", "file": "{source.jsonl}", "line": bad.line,
                        "field": bad.field, "text": bad.text})
    return drop(row, bad.reason, file=bad.file, line=bad.line, field=bad.field, error=bad.message)


def _item_row(item: BenchItem, cfg: BenchmarkConfig) -> Row:
    from ..licences import provenance_for

    key = make_key(cfg.name, item.record_id, "bench")
    prov = item.meta.get("provenance") if isinstance(item.meta.get("provenance"), dict) else \
        provenance_for(cfg.name, item.record_id)
    meta = {"record_id": item.record_id, "category": item.category, "file": item.file, "provenance": prov,
            "bench_split": bench_split(key, cfg.seed, cfg.align_fraction),
            "benchmark": {"name": cfg.name, "version": cfg.version, "seed": cfg.seed}}
    if item.line is not None:
        meta["line"] = item.line
    if item.meta:
        meta["source_row"] = {k: item.meta.get(k) for k in ("task", "dataset", "record_id") if item.meta.get(k)}
    row = new_row(key=key, task=TASK_OF[item.category], dataset=cfg.name, instruction=item.instruction, meta=meta)
    try:
        row["src"] = _source_image(item.image, cfg, item.record_id)
    except (UserError, ValueError) as e:
        drop(row, UNREADABLE, file=item.file, line=item.line, error=str(e)[:300])
    return row


def _objects(item: BenchItem) -> tuple[str | None, str | None]:
    if item.object:
        return item.object, item.target_object
    if item.meta:  # a row of an output: the names its meta gives
        from ..stages.llm_instruction import edit_spec

        try:
            spec = edit_spec({"task": item.meta.get("task"), "meta": item.meta})
            return spec.obj, spec.target_obj
        except ValueError:
            pass
    return edit_objects(item.category, item.instruction)


def _annotation_caption(item: BenchItem) -> tuple[str | None, str]:
    if item.caption:
        return item.caption, "jsonl" if item.line is not None else "meta.source_caption"
    caps = item.meta.get("captions") if isinstance(item.meta.get("captions"), dict) else {}
    if isinstance(caps.get("src"), str) and caps["src"].strip():
        return " ".join(caps["src"].split()), "meta.captions.src"
    if item.meta:
        from ..stages.caption import annotation_captions

        found, sources = annotation_captions({"task": item.meta.get("task"), "meta": item.meta}, ["src"])
        if found.get("src"):
            return found["src"], f"annotations:{sources['src']}"
    return None, "unavailable"


def source_captions(rows: list[Row], items: list[BenchItem], cfg: BenchmarkConfig) -> None:
    """``meta.source_caption`` (+ ``caption_provenance``) of every kept row, or drop it."""
    c = cfg.captioner
    if c.backend == "blip2":
        from .. import imageio
        from ..models.blip2 import Blip2Captioner

        live = [i for i, r in enumerate(rows) if r["keep"]]
        if live:
            captioner = Blip2Captioner(c.model, device=c.device, dtype=c.dtype, local_files_only=c.local_files_only,
                                       batch_size=c.caption_batch_size, max_new_tokens=c.max_new_tokens,
                                       prompt=c.prompt)
            texts = captioner.caption([imageio.decode(rows[i]["src"]) for i in live])
            for i, text in zip(live, texts):
                text = " ".join((text or "").split())
                if text:
                    rows[i]["meta"]["source_caption"] = text
                    rows[i]["meta"]["caption_provenance"] = {"backend": "blip2", "model": captioner.model_id}
                else:
                    drop(rows[i], NO_SOURCE_CAPTION, record=items[i].record_id, backend="blip2", error="empty caption")
        return
    for row, item in zip(rows, items):
        if not row["keep"]:
            continue
        text, how = _annotation_caption(item)
        if text:
            row["meta"]["source_caption"] = text
            row["meta"]["caption_provenance"] = {"backend": "annotations", "source": how}
        else:
            drop(row, NO_SOURCE_CAPTION, record=item.record_id, file=item.file, line=item.line,
                 hint="give 'caption' in the JSONL or use --captioner blip2")


def target_captions(rows: list[Row], items: list[BenchItem], cfg: BenchmarkConfig) -> dict:
    """``meta.target_caption`` (+ ``target_caption_provenance``) of every kept row, or drop it; returns
    the LLM client's statistics (empty without an endpoint)."""
    tc = cfg.target_caption
    ask: list[int] = []
    for i, (row, item) in enumerate(zip(rows, items)):
        if not row["keep"]:
            continue
        obj, new = _objects(item)
        row["meta"]["objects"] = {k: v for k, v in (("object", obj), ("target_object", new)) if v}
        caps = item.meta.get("captions") if isinstance(item.meta.get("captions"), dict) else {}
        if item.target_caption:
            row["meta"]["target_caption"] = item.target_caption
            row["meta"]["target_caption_provenance"] = {"path": "given"}
        elif tc.llm.base_url:
            ask.append(i)
        elif isinstance(caps.get("tgt"), str) and caps["tgt"].strip():
            # a row of an output whose caption stage captioned its target: offline, that caption is the target's
            row["meta"]["target_caption"] = " ".join(caps["tgt"].split())
            row["meta"]["target_caption_provenance"] = {"path": "meta.captions.tgt"}
        else:
            text, how = rule_target_caption(item.category, row["meta"]["source_caption"], obj, new)
            if text is None:
                drop(row, how, record=item.record_id, file=item.file, line=item.line, object=obj,
                     hint="give 'target_caption' (or 'object') in the JSONL, or an LLM endpoint")
            else:
                row["meta"]["target_caption"] = text
                row["meta"]["target_caption_provenance"] = {"path": how}
    if not ask:
        return {}
    return _ask_llm([rows[i] for i in ask], cfg)


def _ask_llm(rows: list[Row], cfg: BenchmarkConfig) -> dict:
    import numpy as np

    from ..llm import LLMClient
    from ..llm.cache import BudgetExhausted

    tc = cfg.target_caption
    llm = tc.llm
    if llm.cache_path:
        import dataclasses

        llm = dataclasses.replace(llm, cache_path=os.path.abspath(os.path.expanduser(llm.cache_path)))
    client = LLMClient(llm, seed=cfg.seed)
    pending = list(rows)
    for round_ in range(tc.retries + 1):
        msgs = [target_caption_messages(r["meta"]["source_caption"], r["instruction"], r["meta"]["category"],
                                        tc.max_words) for r in pending]
        seeds = [{"seed": int(np.random.default_rng(
            int.from_bytes(hashlib.sha256(f"{cfg.seed}\x00{r['key']}\x00{round_}".encode()).digest()[:8], "big")
        ).integers(2**31))} for r in pending]
        results = client.complete_many(msgs, seeds)
        again = []
        for row, res in zip(pending, results):
            if isinstance(res, BudgetExhausted):
                drop(row, "llm budget exhausted")
                continue
            if isinstance(res, Exception):
                drop(row, LLM_FAILED, error=str(res)[:300])
                continue
            text, why = check_target_caption(res.text, row["meta"]["source_caption"], tc)
            if text is None:
                if round_ == tc.retries:
                    drop(row, LLM_REJECTED, why=why, answer=res.text[:200])
                else:
                    again.append(row)
                continue
            row["meta"]["target_caption"] = text
            row["meta"]["target_caption_provenance"] = {"path": "llm", "model": llm.model, "cached": res.cached,
                                                        "asked": round_ + 1}
        pending = again
        if not pending:
            break
    return dict(client.stats)


# -- the output --------------------------------------------------------------------------------

def _fingerprint(cfg: BenchmarkConfig) -> str:
    return hashlib.sha256(json.dumps(cfgmod.to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _prepare(root: Path, cfg: BenchmarkConfig, overwrite: bool) -> None:
    """Create the output folder; one written by another config is replaced only with ``overwrite``, a
    folder this engine did not write never."""
    from ..runner import remove_output
    from ..storage import Location
    from ..writer import FORMAT as SHARD_FORMAT
    from ..writer import RUN_FILE

    loc = Location(str(root))
    fp = _fingerprint(cfg)
    if (root / RUN_FILE).is_file():
        try:
            prev = json.loads((root / RUN_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            prev = None
        if (not isinstance(prev, dict) or prev.get("fingerprint") != fp) and not overwrite:
            raise UserError(f"{root}: holds a benchmark built with another config; pass --overwrite or choose "
                            "another --name/--version")
        remove_output(loc)  # a benchmark is rebuilt whole (it is small): same config, same bytes
    elif root.exists() and any(root.iterdir()):
        raise UserError(f"{root}: exists and holds files this engine did not write; choose another --out, "
                        "--name or --version")
    root.mkdir(parents=True, exist_ok=True)
    (root / RUN_FILE).write_text(json.dumps({"fingerprint": fp, "format": SHARD_FORMAT, "benchmark": FORMAT},
                                            indent=1, sort_keys=True))


def _select(items: list[BenchItem], cfg: BenchmarkConfig) -> list[BenchItem]:
    if cfg.limit is None or len(items) <= cfg.limit:
        return items
    order = sorted(items, key=lambda it: hashlib.sha256(f"{cfg.seed}\x00{it.record_id}".encode()).digest())
    return order[: cfg.limit]


def build(cfg: BenchmarkConfig, *, overwrite: bool = False) -> dict:
    """Build the benchmark output ``<out>/<name>/<version>``; returns its manifest."""
    from ..writer import ShardWriter

    if bool(cfg.jsonl) == bool(cfg.from_output):
        raise ConfigError("benchmark: give a JSONL (with --images) or --from-output, one of the two")
    roots: dict[str, str] = {}
    bad: list[BadLine] = []
    items: list[BenchItem] = []
    if cfg.jsonl:
        roots["source.jsonl"] = os.path.abspath(cfg.jsonl)
        roots["source.images"] = os.path.abspath(cfg.images or os.path.dirname(cfg.jsonl) or ".")
        for it in read_jsonl(cfg.jsonl, cfg.images):
            if isinstance(it, BadLine):
                if cfg.strict:
                    raise UserError(str(it))
                log.warning("%s", it)
                bad.append(it)
            else:
                items.append(it)
    else:
        roots["source.output"] = os.path.abspath(cfg.from_output)
        items = _select(list(read_output(cfg.from_output)), cfg)
    if not items and not bad:
        raise UserError(f"{cfg.jsonl or cfg.from_output}: no benchmark samples in it")

    rows = [_item_row(it, cfg) for it in items]
    source_captions(rows, items, cfg)
    llm_stats = target_captions(rows, items, cfg)
    rows += [_bad_row(b, cfg) for b in bad]
    for r in rows:
        r["meta"].setdefault("bench_split", bench_split(r["key"], cfg.seed, cfg.align_fraction))

    root = Path(cfg.out) / cfg.name / cfg.version
    _prepare(root, cfg, overwrite)
    writer = ShardWriter(root, output=cfg.name, version=cfg.version)
    index = 0
    halves: dict[str, dict] = {}
    for half in SPLITS:
        mine = sorted((r for r in rows if r["meta"]["bench_split"] == half), key=lambda r: r["key"])
        tars = []
        for start in range(0, len(mine), cfg.samples_per_shard):
            chunk = mine[start:start + cfg.samples_per_shard]
            stats = writer.write_shard(index, chunk, {"records": len(chunk), "bench_split": half})
            if stats["train"]["rows"]:
                tars.append(f"train/{index:06d}.tar")
            index += 1
        kept = [r for r in mine if r["keep"]]
        halves[half] = {"rows": len(kept), "rejected": len(mine) - len(kept), "tars": tars,
                        "categories": dict(sorted(Counter(r["meta"]["category"] for r in kept).items()))}
    conf = cfgmod.to_dict(cfg)
    for k, token in (("jsonl", "{source.jsonl}"), ("images", "{source.images}"), ("from_output", "{source.output}")):
        if conf.get(k):
            conf[k] = token
    extra = {"name": cfg.name, "version": cfg.version, "roots": roots, "complete": True, "failed_shards": [],
             "mixture_weight": 0.0,  # an evaluation set, never training data
             "benchmark": {"format": FORMAT, "seed": cfg.seed, "align_fraction": cfg.align_fraction,
                           "splits": halves, "bad_lines": len(bad), "captioner": cfg.captioner.backend,
                           "target_caption": "llm" if cfg.target_caption.llm.base_url else "rule",
                           "llm_stats": llm_stats}}
    manifest = writer.write_manifest(config=conf, extra=extra)
    log.info("benchmark %s/%s: %s", cfg.name, cfg.version,
             ", ".join(f"{h} {halves[h]['rows']}" for h in SPLITS) + f", rejected {manifest['splits']['rejected']['rows']}")
    return manifest


# -- reading a half ----------------------------------------------------------------------------

def split_tars(output: str | os.PathLike, split: str) -> list[str]:
    """The train tars of one half (``align`` / ``eval``) of a benchmark output, as paths."""
    from ..generations import current

    if split not in SPLITS:
        raise UserError(f"benchmark split {split!r}: expected one of {', '.join(SPLITS)}")
    gen = current(str(output))
    bench = gen.manifest.get("benchmark")
    if not isinstance(bench, dict) or bench.get("format") != FORMAT:
        raise UserError(f"{output}: not a benchmark output (its manifest has no 'benchmark' section)")
    return [str(gen.file(t).path) for t in bench["splits"][split]["tars"]]


def read_samples(output: str | os.PathLike, split: str) -> Iterator[dict]:
    """The samples of one half, in key order: ``{key, record_id, category, instruction, source_caption,
    target_caption, image (bytes), image_ext}`` (read at the sidecar's offsets, no tar scan)."""
    import pyarrow.parquet as pq

    for tar in split_tars(output, split):
        table = pq.read_table(tar[: -len(".tar")] + ".parquet").to_pylist()
        with open(tar, "rb") as fh:
            for r in table:
                meta = json.loads(r["meta"])
                if meta.get("bench_split") != split:
                    raise UserError(f"{tar}: row {r['key']} is in half {meta.get('bench_split')!r}, listed as {split}")
                fh.seek(r["src_offset"])
                yield {"key": r["key"], "record_id": meta.get("record_id"), "category": meta["category"], "instruction": r["instruction"],
                       "source_caption": meta["source_caption"], "target_caption": meta["target_caption"],
                       "image": fh.read(r["src_size"]), "image_ext": r["src_member"].rsplit(".", 1)[-1]}
