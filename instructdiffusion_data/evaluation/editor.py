"""Any InstructPix2Pix-compatible diffusers model, run on batches of benchmark samples.

``Editor(EditorConfig(model=...))`` loads ``StableDiffusionInstructPix2PixPipeline.from_pretrained(model)``:
a local folder (``runs/<name>/final``, what the trainer writes) or a hub id already in the Hugging Face cache
(``timbrooks/instruct-pix2pix``; ``local_files_only`` stops it from reaching the hub). The UNet must take 8
input channels (noisy latents + source latents). On a GPU it runs in fp16, on a CPU in fp32 (``dtype``).

Every sample gets its own generator, seeded from ``seed`` and the sample's key (and a variant number), so an
edit does not depend on the batch it was run in, on the batch size or on the other samples of the run.
Sources are resized so that their longer side is ``resolution``, both sides rounded to a multiple of 64
(what SD's UNet needs); samples of one size are batched together.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = ("auto", "fp16", "bf16", "fp32")
SCHEDULERS = ("euler_ancestral", "model")
SIDE_MULTIPLE = 64


@dataclass
class EditorConfig:
    model: str
    steps: int = 100
    resolution: int = 512
    batch_size: int = 8
    seed: int = 0
    device: str | None = None  # cuda when available, else cpu
    dtype: str = "auto"  # auto: fp16 on a GPU, fp32 on a CPU
    scheduler: str = "euler_ancestral"  # InstructPix2Pix's sampler; "model": the scheduler saved with the model
    local_files_only: bool = False

    def check(self) -> None:
        for name in ("steps", "resolution", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.resolution % SIDE_MULTIPLE:
            raise ConfigError(f"resolution: must be a multiple of {SIDE_MULTIPLE}, got {self.resolution}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}")


@dataclass
class EditJob:
    """One edit to make: the sample's key (seeds it), its source pixels, instruction and guidance."""

    key: str
    src: np.ndarray  # RGB uint8, already at the edit size (see fit_source)
    instruction: str
    text_guidance: float
    image_guidance: float
    variant: int = 0


def fit_source(rgb: np.ndarray, resolution: int) -> np.ndarray:
    """Resize so that the longer side is ``resolution``, each side rounded to a multiple of 64 (>= 64)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    s = resolution / max(h, w)
    nh = max(SIDE_MULTIPLE, int(round(h * s / SIDE_MULTIPLE)) * SIDE_MULTIPLE)
    nw = max(SIDE_MULTIPLE, int(round(w * s / SIDE_MULTIPLE)) * SIDE_MULTIPLE)
    if (nh, nw) == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.LANCZOS))


def sample_seed(seed: int, key: str, variant: int = 0) -> int:
    """A 63-bit seed from the run seed, the sample key and the variant (stable across runs and machines)."""
    h = hashlib.sha256(f"{int(seed)}\x00{key}\x00{int(variant)}".encode()).digest()
    return int.from_bytes(h[:8], "big") & ((1 << 63) - 1)


def batches(jobs: Sequence[EditJob], batch_size: int) -> Iterator[list[EditJob]]:
    """Jobs grouped by (image size, guidance pair), in order of first appearance, ``batch_size`` at most."""
    groups: dict[tuple, list[EditJob]] = {}
    for j in jobs:
        groups.setdefault((j.src.shape, j.text_guidance, j.image_guidance), []).append(j)
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            yield group[i:i + batch_size]


@contextlib.contextmanager
def _quiet_loading():
    """No diffusers/transformers loading progress bars on stderr (restored afterwards)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            dlog.enable_progress_bar()
        if was[1]:
            tlog.enable_progress_bar()


class Editor:
    """A loaded InstructPix2Pix pipeline; :meth:`edit` runs jobs in batches."""

    def __init__(self, cfg: EditorConfig):
        import torch
        from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

        cfg.check()
        self.cfg = cfg
        self.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = str(self.device).startswith("cuda")
        name = {"auto": "fp16" if on_gpu else "fp32"}.get(cfg.dtype, cfg.dtype)
        if name != "fp32" and not on_gpu:
            raise ConfigError(f"dtype: {name} needs a GPU (device is {self.device}); use fp32 or auto")
        self.dtype_name = name
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]
        try:
            with _quiet_loading():
                pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                    cfg.model, dtype=dtype, safety_checker=None, feature_extractor=None,
                    requires_safety_checker=False, local_files_only=cfg.local_files_only)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"MODEL {cfg.model}: cannot load an InstructPix2Pix pipeline: {first}") from None
        in_ch = pipe.unet.config.in_channels
        if in_ch != 8:
            raise ConfigError(f"MODEL {cfg.model}: unet takes {in_ch} input channels, an InstructPix2Pix model takes 8 "
                              "(noisy + source latents); give a trained editing model, e.g. runs/<name>/final")
        if cfg.scheduler == "euler_ancestral":
            pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.images_done = 0
        self.nonfinite = 0  # edits whose decoded pixels held NaN/inf (fp16 overflow): counted and logged
        self.seconds = 0.0
        log.info("InstructPix2Pix %s on %s (%s), %s, %d steps", cfg.model, self.device, name,
                 type(self.pipe.scheduler).__name__, cfg.steps)

    def describe(self) -> dict:
        c = self.cfg
        return {"model": c.model, "device": str(self.device), "dtype": self.dtype_name, "steps": c.steps,
                "resolution": c.resolution, "batch_size": c.batch_size, "seed": c.seed,
                "scheduler": type(self.pipe.scheduler).__name__, "nonfinite_edits": self.nonfinite}

    def edit(self, jobs: Sequence[EditJob]) -> Iterator[tuple[EditJob, np.ndarray]]:
        """Yields ``(job, edited RGB uint8)`` batch by batch (grouped as :func:`batches` does)."""
        import torch
        from PIL import Image

        for batch in batches(jobs, self.cfg.batch_size):
            gens = [torch.Generator("cpu").manual_seed(sample_seed(self.cfg.seed, j.key, j.variant)) for j in batch]
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.pipe([j.instruction for j in batch], image=[Image.fromarray(j.src) for j in batch],
                                num_inference_steps=self.cfg.steps, guidance_scale=batch[0].text_guidance,
                                image_guidance_scale=batch[0].image_guidance, generator=gens,
                                output_type="np").images
            self.seconds += time.perf_counter() - t0
            self.images_done += len(batch)
            for j, img in zip(batch, out):
                if not np.isfinite(img).all():
                    self.nonfinite += 1
                    log.warning("edit of %s: non-finite pixels (set to 0); try --dtype fp32 or bf16", j.key)
                yield j, (np.clip(np.nan_to_num(img), 0.0, 1.0) * 255.0).round().astype(np.uint8)
