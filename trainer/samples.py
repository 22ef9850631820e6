"""One raw WebDataset sample of the trainer's streams, turned into arrays: its task and kind (paired or
adaptation row), decoding (:func:`decode_sample`), the paired augmentation (:func:`augment_sample`,
:mod:`trainer.augment`) and the batch contract (:func:`collate`). :mod:`trainer.data` builds the streams
from these; its module names stay importable from there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from instructdiffusion_data.errors import RecordError
from instructdiffusion_data.imageio import decode, decode_gray

from .augment import AugmentConfig, Geometry, Region, augment_pair, flip_allowed, region_of

ADAPT_TASK = "adapt"  # adaptation rows (issue 18): a target image and its caption (``txt``), no source


def sample_task(sample: dict) -> str | None:
    """The task of a raw sample (its json member, parsed once and kept under ``__doc__``)."""
    if "__doc__" not in sample:
        doc: Any = {}
        if "json" in sample:
            try:
                doc = json.loads(sample["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                doc = {}
        sample["__doc__"] = doc if isinstance(doc, dict) else {}
    return sample["__doc__"].get("task")


def row_kind_ok(sample: dict, rows: str) -> bool:
    """``rows="paired"``: every row but adaptation rows; ``"adapt"``: adaptation rows only."""
    j = sample.get("json")
    if rows == "paired" and "__doc__" not in sample and (not isinstance(j, bytes) or b"adapt" not in j):
        return True  # no "adapt" anywhere in the json: not an adaptation row (replay reads stay cheap)
    return (sample_task(sample) == ADAPT_TASK) == (rows == "adapt")



def _member(sample: dict, prefix: str) -> tuple[str, bytes] | None:
    for k, v in sample.items():
        if k == prefix or k.startswith(prefix + "."):
            return k, v
    return None


def to_chw(img: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> uint8 [3, H, W]. Batches travel as uint8 (4x less than float between
    processes); :func:`to_model_range` makes floats in [-1, 1] on the device. The sample path stays in
    numpy (single-threaded): torch's intra-op pool only slows these small copies down."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def collate(samples: list[dict]) -> dict:
    """Stack numpy arrays into tensors, ints into a tensor, keep strings as a list.

    Batch contract: every sample of a batch has the same members. A paired batch has ``src`` and
    ``tgt`` (uint8 [B, 3, H, W]), ``input_ids`` and ``has_src`` (all 1); an adaptation batch
    (``MixtureDataset(rows="adapt")``, task ``adapt``) has ``tgt``, ``input_ids`` (the caption) and
    ``has_src`` (all 0) and no ``src``. A stream is of one kind, so a batch is all-adapt or none; a
    batch that mixes them is refused (ValueError)."""
    keys = set(samples[0])
    for s in samples[1:]:
        if set(s) != keys:
            if ("src" in s) != ("src" in keys):
                raise ValueError("a batch mixes adaptation rows (no source image) with paired rows: build the "
                                 "dataset with rows='adapt' or rows='paired', not both")
            raise ValueError(f"samples of a batch have different members: {sorted(keys)} vs {sorted(s)}")
    out: dict[str, Any] = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if isinstance(vals[0], np.ndarray):
            out[k] = torch.from_numpy(np.stack(vals))
        elif isinstance(vals[0], (bool, np.bool_)):
            out[k] = torch.tensor(vals, dtype=torch.bool)
        elif isinstance(vals[0], (int, np.integer)):
            out[k] = torch.tensor(vals, dtype=torch.int64)
        else:
            out[k] = vals
    return out


def to_model_range(x: torch.Tensor, device, dtype) -> torch.Tensor:
    return x.to(device, non_blocking=True).to(dtype).div_(127.5).sub_(1.0)


@dataclass
class Decoded:
    """A decoded raw sample. ``src`` is None for adaptation rows (task ``adapt``: a target and its
    caption); ``text`` is the ``txt`` member (the instruction, or the caption of an adaptation row);
    ``mask`` the optional ``mask`` member ([H, W] uint8, 0/255) when asked for."""

    src: np.ndarray | None
    tgt: np.ndarray
    text: str
    doc: dict
    mask: np.ndarray | None = None

    @property
    def task(self) -> str | None:
        return self.doc.get("task")

    @property
    def has_src(self) -> bool:
        return self.src is not None


def decode_sample(sample: dict, with_mask: bool = False) -> Decoded:
    """Decode a raw sample; RecordError when unusable (a missing or corrupt image, no text). A row
    without a source is usable only as an adaptation row (task ``adapt``)."""
    key = sample.get("__key__")
    where = f"{sample.get('__url__')}"
    task = sample_task(sample)
    doc = sample["__doc__"]
    imgs: dict[str, np.ndarray | None] = {}
    for part in ("src", "tgt"):
        m = _member(sample, part)
        if m is None:
            if part == "src" and task == ADAPT_TASK:
                imgs[part] = None
                continue
            raise RecordError(f"{part} image missing", file=where, record=key)
        imgs[part] = decode(m[1], file=f"{where}:{key}.{m[0]}", record=key)
    if "txt" not in sample:
        raise RecordError("caption missing" if task == ADAPT_TASK else "instruction missing", file=where, record=key)
    text = sample["txt"].decode("utf-8", errors="replace")
    mask = None
    if with_mask:
        m = _member(sample, "mask")
        if m is not None:
            mask = decode_gray(m[1], file=f"{where}:{key}.{m[0]}", record=key)
    return Decoded(imgs["src"], imgs["tgt"], text, doc, mask)


def decode_pair(sample: dict) -> tuple[np.ndarray | None, np.ndarray, str, dict]:
    """Source, target, instruction and json doc of a raw sample; RecordError when unusable. The source
    is None for an adaptation row (task ``adapt``), whose text is its caption."""
    d = decode_sample(sample)
    return d.src, d.tgt, d.text, d.doc


@dataclass
class Augmented:
    src: np.ndarray | None  # None for adaptation rows
    tgt: np.ndarray
    region: Region  # what the placement kept whole
    geometry: Geometry  # crop or pad, side, offset, flip


def augment_sample(d: Decoded, resolution: int, rng: np.random.Generator | None, aug: AugmentConfig) -> Augmented:
    """Crop/pad, resize and flip a decoded sample keeping its protected region whole
    (:mod:`trainer.augment`)."""
    ref = d.src if d.src is not None else d.tgt
    region = region_of(d.doc, d.text, ref.shape[:2], d.mask, d.src, d.tgt, aug) if aug.task_aware else Region()
    src, tgt, g = augment_pair(d.src, d.tgt, resolution, rng, aug, flip_allowed(d.text, d.task, aug), region)
    return Augmented(src, tgt, region, g)
