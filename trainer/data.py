"""Data side of the trainer: one WebDataset stream per dataset, mixed by weight, paired augmentation.

Per dataset: shard urls -> (resampled with a seeded rng | shuffled per epoch and split by rank and
worker) -> ``webdataset`` tar expansion and grouping -> a sample shuffle buffer. The mixture draws the
dataset of each sample with a seeded rng (weights from the mixture manifest), then the sample is
decoded, augmented (the same crop or pad, resize and flip for source and target, keeping the mask,
the drawn marks and the edited region whole: :mod:`trainer.augment`) and its instruction tokenised.
Ranks: resampled shards give every (rank, worker) its own seeded stream; in epoch mode each epoch's
shard order is shared and split by global worker, so the ranks read disjoint shards covering the
epoch. Adaptation rows (task ``adapt``: target and caption, no source) are read only by
``MixtureDataset(rows="adapt")`` and left out of task training (:func:`collate` has the batch contract). Everything is a pure function of ``(seed, rank, logical worker, generation)``, so the
position of a stream is one number per worker: how many raw samples it has drawn. Resume replays that
many raw samples (tar reads only, no decoding) and continues exactly where the run stopped
(``resume_mode: replay``); for very long runs ``reseed`` starts fresh streams with a new generation
instead (statistically the same, not sample for sample).

A sample that cannot be used (corrupt image, missing member, unreadable tar) is skipped and counted,
never fatal; the count travels with the batches (``corrupt``) and is logged and checkpointed.

Which files: a mixture manifest (``idd mix``) names the shards of the generation of each output it
read; the ``data.outputs`` fallback reads each output's current generation
(:mod:`instructdiffusion_data.generations`). Before training, every shard is checked against the size
the output's manifest recorded (``tar_bytes``; in the mixture, ``shard_files``): a missing or
wrong-sized shard stops the run with one line naming it, or with ``data.bad_shards: skip`` is left
out, with the count logged. Sources written before sizes were recorded are checked for presence only
(with a warning).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import cv2
import numpy as np
import torch
import webdataset as wds

from instructdiffusion_data.errors import ConfigError, RecordError

from .augment import AugmentConfig, flip_allowed, paired_augment
from .datasets import DatasetSpec, ScoreGate
from .samples import (ADAPT_TASK, Augmented, Decoded, augment_sample, collate, decode_pair, decode_sample,
                      row_kind_ok, sample_task, to_chw, to_model_range)

log = logging.getLogger(__name__)

# the augmentation (trainer/augment.py) and the sample functions (trainer/samples.py) stay importable from here
__all__ = ["AugmentConfig", "DataConfig", "StreamState", "Mixture", "MixtureDataset", "Decoded", "Augmented",
           "decode_sample", "decode_pair", "augment_sample", "paired_augment", "flip_allowed", "collate",
           "make_loader", "to_chw", "to_model_range", "state_file", "row_kind_ok", "sample_task", "ADAPT_TASK"]

# --- configuration --------------------------------------------------------------------------------

ROW_KINDS = ("paired", "adapt")  # MixtureDataset(rows=...): task training, or adaptation training


@dataclass
class DataConfig:
    mixture: str | None = None  # mixture manifest written by `idd mix`
    outputs: list[str] = field(default_factory=list)  # fallback: output dirs (globs) holding manifest.json
    output_weights: dict[str, float] = field(default_factory=dict)  # fallback: weight per output name
    mixing: Literal["effective", "weight"] = "effective"  # P(dataset) ~ samples*weight, or ~ weight
    resolution: int = 256
    resampled: bool = True  # resample shards with replacement (infinite); False: epochs, split by rank/worker
    shuffle_buffer: int = 256  # per dataset stream (raw encoded samples: ~bytes_per_sample * this in RAM)
    shuffle_initial: int = 64
    num_workers: int = 2
    prefetch_factor: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    resume_mode: Literal["auto", "replay", "reseed"] = "auto"
    replay_max_samples: int = 200_000  # auto: replay when a worker has drawn at most this many, else reseed
    log_corrupt: int = 5  # log the first N skipped samples per worker
    bad_shards: Literal["error", "skip"] = "error"  # a shard missing or not the size its manifest says
    # train only on samples whose typed score columns (instructdiffusion_data.schema.SCORE_COLUMNS, read
    # from each shard's parquet sidecar) reach these minimums, e.g. {aesthetic_laion_tgt: 5.0}; a sample
    # without the score (null) is left out
    min_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class StreamState:
    """Where the data streams of one rank stand: raw samples drawn per logical worker.

    One per rank: each process checkpoints its own (``to_dict()`` into ``trainer_state_rank<r>.json``,
    :func:`state_file`) and restores its own (``from_dict(...).for_resume(...)``); the rank and the
    ``[processes, workers]`` layout travel with it, and a dataset refuses the state of another rank."""

    seed: int = 0
    generation: int = 0
    positions: dict[int, int] = field(default_factory=dict)
    corrupt: dict[int, int] = field(default_factory=dict)
    batches: int = 0  # batches consumed from the loader (decides which worker yields the next one)
    layout: list[int] = field(default_factory=list)  # [processes, loader workers] the positions belong to
    rank: int | None = None  # the process these positions belong to (None: not yet bound to a dataset)

    def update(self, batch: dict) -> None:
        w = int(batch["worker"][0])
        self.positions[w] = max(self.positions.get(w, 0), int(batch["pos"].max()))
        self.corrupt[w] = max(self.corrupt.get(w, 0), int(batch["corrupt"].max()))
        self.batches += 1

    @property
    def corrupt_total(self) -> int:
        return sum(self.corrupt.values())

    def to_dict(self) -> dict:
        return {"seed": self.seed, "generation": self.generation, "batches": self.batches, "layout": self.layout,
                "rank": self.rank, "positions": {str(k): v for k, v in self.positions.items()},
                "corrupt": {str(k): v for k, v in self.corrupt.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamState":
        return cls(seed=d["seed"], generation=d.get("generation", 0), batches=d.get("batches", 0),
                   layout=list(d.get("layout", [])), rank=d.get("rank"),
                   positions={int(k): v for k, v in d.get("positions", {}).items()},
                   corrupt={int(k): v for k, v in d.get("corrupt", {}).items()})

    def for_resume(self, mode: str, replay_max: int, layout: list[int] | None = None) -> "StreamState":
        """The state a resumed loader starts from: the same positions (replay) or a new generation.
        A different [processes, workers] layout cannot replay: it gets a new generation."""
        drawn = max(self.positions.values(), default=0)
        moved = bool(layout and self.layout and list(layout) != self.layout)
        if moved:
            log.warning("data streams saved with [processes, workers] = %s, resumed with %s: new generation, "
                        "not an exact replay", self.layout, layout)
        if moved or mode == "reseed" or (mode == "auto" and drawn > replay_max):
            log.info("data streams: new generation %d (reseed; %d samples drawn per worker at most)",
                     self.generation + 1, drawn)
            return StreamState(seed=self.seed, generation=self.generation + 1, corrupt=dict(self.corrupt),
                               rank=self.rank)
        log.info("data streams: replaying %d raw samples per worker to resume exactly", drawn)
        return StreamState.from_dict(self.to_dict())


def state_file(rank: int) -> str:
    """The checkpoint file of one rank's trainer state (step and :class:`StreamState`)."""
    return f"trainer_state_rank{int(rank)}.json"


# --- streams -------------------------------------------------------------------------------------

def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class _Counter:
    """Counts skipped samples of one worker (and logs the first few)."""

    def __init__(self, base: int, log_first: int):
        self.n = base
        self.log_first = log_first
        self.logged = 0
        self.active = True  # False while replaying: those were counted before the checkpoint

    def skip(self, why: str) -> None:
        if not self.active:
            return
        self.n += 1
        if self.logged < self.log_first:
            self.logged += 1
            log.warning("skipped sample: %s", why)

    def tar_handler(self, exn: Exception) -> bool:
        self.skip(f"tar read error: {exn}")
        return True


def _shard_urls(spec: DatasetSpec, cfg: DataConfig, seed: int, gworker: int, gtotal: int,
                order_seed: int | None = None) -> Iterator[dict]:
    """Shard urls of one (rank, worker). Resampled: drawn with replacement by ``seed`` (distinct per rank
    and worker). Epochs: every epoch one shuffled order, the same on every rank and worker
    (``order_seed``, shared by all of them), split by global worker, so that the workers of all ranks
    read each shard exactly once per epoch."""
    if cfg.resampled:
        # a distinct seeded stream per (rank, worker): no split needed, every worker sees every shard
        yield from wds.ResampledShards(spec.shards, seed=seed, worker_seed=lambda: 0, deterministic=True)
        return
    rng = random.Random(seed if order_seed is None else order_seed)
    epoch = 0
    while True:
        order = list(spec.shards)
        rng.shuffle(order)
        if len(order) >= gtotal:  # split by node and worker: shard i -> global worker i % total
            mine = order[gworker::gtotal]
            for u in mine:
                yield {"url": u}
        else:  # fewer shards than workers: every worker reads them all, keeps every gtotal-th sample
            for u in order:
                yield {"url": u, "__sample_split__": (gworker, gtotal)}
        epoch += 1


def _split_samples(src: Iterator[dict]) -> Iterator[dict]:
    """Sample-level split for the case of fewer shards than workers (see :func:`_shard_urls`)."""
    counts: dict[str, int] = {}
    for s in src:
        split = s.pop("__sample_split__", None)
        if split is None:
            yield s
            continue
        url = s.get("__url__", "")
        i = counts.get(url, 0)
        counts[url] = i + 1
        if i % split[1] == split[0]:
            yield s


def _of_kind(samples: Iterator[dict], rows: str, name: str, patience: int = 10_000) -> Iterator[dict]:
    """The samples of the training mode ``rows``; a dataset that yields none of them in ``patience``
    rows in a row (a manifest without task counts, so not caught before training) stops the run."""
    run = 0
    for smp in samples:
        if row_kind_ok(smp, rows):
            run = 0
            yield smp
            continue
        run += 1
        if run >= patience:
            raise ConfigError(f"dataset {name}: {patience} rows in a row are "
                              f"{'not adaptation rows' if rows == 'adapt' else 'adaptation rows (task adapt)'}; "
                              f"it does not belong in a {'adaptation' if rows == 'adapt' else 'task'} training mixture")


def dataset_stream(spec: DatasetSpec, cfg: DataConfig, seed: int, gworker: int, gtotal: int,
                   counter: _Counter, *, order_seed: int | None = None, rows: str = "paired") -> Iterator[dict]:
    """Raw (undecoded) samples of one dataset, infinite, shuffled through a buffer; only the rows of
    the training mode ``rows`` (:func:`row_kind_ok`), as the score gate, before the split and shuffle."""
    urls = _shard_urls(spec, cfg, seed, gworker, gtotal, order_seed)
    if not cfg.resampled:
        split_of: dict[str, Any] = {}

        def tag(src):
            for u in src:
                split_of[u["url"]] = u.get("__sample_split__")
                yield u

        urls = tag(urls)
    samples = wds.tarfile_to_samples(handler=counter.tar_handler)(urls)
    if cfg.min_scores:
        gate = ScoreGate(cfg.min_scores)
        samples = (smp for smp in samples if gate.ok(smp))
    samples = _of_kind(samples, rows, spec.name)
    if not cfg.resampled:
        def retag(src):
            for s in src:
                sp = split_of.get(s.get("__url__"))
                if sp is not None:
                    s["__sample_split__"] = sp
                yield s

        samples = _split_samples(retag(samples))
    if cfg.shuffle_buffer > 1:
        samples = wds.filters._shuffle(samples, bufsize=cfg.shuffle_buffer, initial=cfg.shuffle_initial,
                                       rng=random.Random(_seed(seed, 7)))
    return samples


class Mixture:
    """Weighted random choice between dataset streams for one (rank, logical worker)."""

    def __init__(self, specs: list[DatasetSpec], cfg: DataConfig, *, seed: int, rank: int, world: int,
                 worker: int, num_workers: int, generation: int = 0, counter: _Counter | None = None,
                 rows: str = "paired"):
        self.specs = specs
        self.counter = counter or _Counter(0, cfg.log_corrupt)
        gtotal = world * num_workers
        gworker = rank * num_workers + worker
        # resampled: shard draws, shuffle buffer and dataset choice seeded per (rank, worker); epochs: the
        # shard order of an epoch shared by every rank and worker (_shard_urls), the rest per worker
        self.streams = [
            dataset_stream(s, cfg, _seed(seed, rank, worker, generation, i), gworker, gtotal, self.counter,
                           order_seed=_seed(seed, generation, i, 5), rows=rows)
            for i, s in enumerate(specs)
        ]
        self.cum = np.cumsum([s.probability for s in specs])
        self.rng = np.random.default_rng(_seed(seed, rank, worker, generation, 10_000))

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        while True:
            i = int(np.searchsorted(self.cum, self.rng.random() * self.cum[-1], side="right"))
            i = min(i, len(self.streams) - 1)
            try:
                yield i, next(self.streams[i])
            except StopIteration:
                raise ConfigError(f"dataset {self.specs[i].name}: its shards hold no readable sample") from None


# --- decoding and augmentation -------------------------------------------------------------------

class MixtureDataset(torch.utils.data.IterableDataset):
    """The training stream of one rank: mixed, decoded, augmented, tokenised samples.

    Each sample carries ``worker`` (its logical worker), ``pos`` (raw samples that worker has drawn,
    this one included) and ``corrupt`` (samples it has skipped so far): :class:`StreamState` keeps
    them to checkpoint the streams' position.

    Ranks: ``rank``/``world`` come from the launcher (accelerate's ``process_index``/``num_processes``).
    Resampled shards: every (rank, worker) draws its own seeded stream, so ranks see different samples;
    epochs: each epoch's shard order is shared and split by global worker (rank * workers + worker), so
    the ranks read disjoint shards that together cover the dataset once per epoch.

    ``rows``: ``"paired"`` (task training: source, target, instruction; adaptation rows are left out
    of the streams) or ``"adapt"`` (adaptation training: only task ``adapt`` rows, target and caption,
    no ``src`` member; see :func:`collate`).
    """

    def __init__(self, specs: list[DatasetSpec], cfg: DataConfig, tokenizer, *, seed: int, rank: int = 0,
                 world: int = 1, num_workers: int | None = None, state: StreamState | None = None,
                 rows: str = "paired"):
        super().__init__()
        if rows not in ROW_KINDS:
            raise ValueError(f"rows: {rows!r} is not one of {', '.join(ROW_KINDS)}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1} (world size {world})")
        _check_row_kind(specs, rows)
        self.specs = specs
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.seed = seed
        self.rank = rank
        self.world = world
        self.rows = rows
        self.num_workers = max(1, cfg.num_workers if num_workers is None else num_workers)
        state = state or StreamState(seed=seed)
        if state.rank is not None and state.rank != rank:
            raise ConfigError(f"data stream state of rank {state.rank} given to rank {rank}: each process resumes "
                              f"from its own {state_file(rank)}")
        state.layout = [world, self.num_workers]
        state.rank = rank
        self.state = StreamState.from_dict(state.to_dict())  # a snapshot: the loop keeps updating its own

    def tokenize(self, text: str) -> np.ndarray:
        ids = self.tokenizer(text, max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True).input_ids
        return np.asarray(ids, dtype=np.int64)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        nw = info.num_workers if info is not None else 1
        if nw != self.num_workers:
            raise RuntimeError(f"MixtureDataset built for {self.num_workers} workers, loader has {nw}")
        # the loader asks worker 0 first: rotate so that the next batch comes from the logical worker
        # that would have produced it in the uninterrupted run
        logical = (wid + self.state.batches) % nw
        start = self.state.positions.get(logical, 0)
        counter = _Counter(self.state.corrupt.get(logical, 0), self.cfg.log_corrupt)
        mix = Mixture(self.specs, self.cfg, seed=self.seed, rank=self.rank, world=self.world, worker=logical,
                      num_workers=nw, generation=self.state.generation, counter=counter, rows=self.rows)
        it = iter(mix)
        counter.active = False
        for _ in range(start):  # replay: read, do not decode
            next(it)
        counter.active = True
        pos = start
        res = self.cfg.resolution
        aug = self.cfg.augment
        for ds, raw in it:
            pos += 1
            rng = np.random.default_rng(_seed(self.seed, self.rank, logical, self.state.generation, pos, 99))
            try:
                d = decode_sample(raw, with_mask=aug.task_aware)
                a = augment_sample(d, res, rng, aug)
                src, tgt = a.src, a.tgt
            except (RecordError, cv2.error, ValueError) as e:
                counter.skip(f"{self.specs[ds].name}: {e}")
                continue
            out = {"tgt": to_chw(tgt), "input_ids": self.tokenize(d.text), "has_src": int(src is not None),
                   "dataset": ds, "worker": logical, "pos": pos, "corrupt": counter.n, "key": raw.get("__key__", "")}
            if src is not None:
                out["src"] = to_chw(src)
            yield out


def _check_row_kind(specs: list[DatasetSpec], rows: str) -> None:
    """A dataset whose manifest lists its tasks and has no row of this training mode would never
    yield: one line before training."""
    for s in specs:
        if not s.tasks:
            continue  # not recorded: the stream filters by row
        n = sum(c for t, c in s.tasks.items() if (t == ADAPT_TASK) == (rows == "adapt"))
        if n == 0:
            what = "adaptation rows (task adapt)" if rows == "adapt" else "rows other than adaptation rows"
            raise ConfigError(f"dataset {s.name}: no {what} (tasks: {', '.join(sorted(s.tasks))}); "
                              f"{'adaptation' if rows == 'adapt' else 'task'} training cannot read it")


def make_loader(dataset: MixtureDataset, batch_size: int) -> torch.utils.data.DataLoader:
    nw = dataset.cfg.num_workers
    kw: dict[str, Any] = {}
    if nw > 0:
        kw = {"prefetch_factor": dataset.cfg.prefetch_factor, "persistent_workers": False}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=nw, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available(), **kw)

