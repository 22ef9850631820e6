"""Inpainting adapter: one interface, two backends.

``lama``
    big-lama as the TorchScript file that simple-lama-inpainting distributes (``big-lama.pt``), loaded
    with ``torch.jit.load`` from a configured path or the ``LAMA_MODEL`` environment variable, the same
    variable simple-lama reads. The call contract is simple-lama's: ``model(img, mask)`` with
    ``img`` float ``[B, 3, H, W]`` in 0..1 and ``mask`` ``[B, 1, H, W]`` in {0, 1}, both padded on
    the bottom/right to a multiple of 8 with symmetric padding; the output ``[B, 3, H', W']`` in 0..1
    is cropped back to the input size and converted with ``clip(x * 255).astype(uint8)``, exactly as
    ``simple_lama_inpainting.SimpleLama.__call__`` does for one image. Images of the same padded size
    are batched (``batch_size`` per forward), on CUDA when available.
``opencv``
    ``cv2.inpaint`` (Telea or Navier-Stokes): no weights, runs anywhere; the CPU demo profile.

Both take RGB ``uint8 [H, W, 3]`` images and ``uint8 [H, W]`` masks (non-zero = fill) and return
RGB ``uint8`` images of the same size. Neither composites: the caller decides what to keep.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

LAMA_ENV = "LAMA_MODEL"
LAMA_PAD_MODULO = 8  # simple_lama_inpainting.utils.util.prepare_img_and_mask(pad_out_to_modulo=8)
BIG_LAMA_URL = "https://github.com/enesmsahin/simple-lama-inpainting/releases/download/v0.1.0/big-lama.pt"


class Inpainter(Protocol):
    backend: str
    model_id: str

    def inpaint(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]: ...


class OpenCVInpainter:
    backend = "opencv"

    def __init__(self, method: Literal["telea", "ns"] = "telea", radius: int = 5):
        if method not in ("telea", "ns"):
            raise ConfigError(f"opencv_method: expected 'telea' or 'ns', got {method!r}")
        if radius < 1:
            raise ConfigError(f"opencv_radius: must be >= 1, got {radius}")
        self.method, self.radius = method, radius
        self._flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        self.model_id = f"opencv-{cv2.__version__}:{method}:r{radius}"

    def inpaint(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for img, m in zip(images, masks):
            _check_pair(img, m)
            out.append(cv2.inpaint(np.ascontiguousarray(img), (m > 0).astype(np.uint8), self.radius, self._flag))
        return out


def resolve_lama_path(path: str | None) -> Path:
    """The TorchScript file: the configured path, else ``$LAMA_MODEL``; a one-line error otherwise."""
    chosen = path or os.environ.get(LAMA_ENV)
    if not chosen:
        raise ConfigError(f"lama backend: no model file; set lama_model in the stage config or {LAMA_ENV} to "
                          f"big-lama.pt (TorchScript, {BIG_LAMA_URL})")
    p = Path(chosen).expanduser()
    if not p.is_file():
        src = "lama_model" if path else LAMA_ENV
        raise ConfigError(f"lama backend: {src}: TorchScript file not found: {p}")
    return p


def file_digest(path: Path, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


class LamaInpainter:
    backend = "lama"

    def __init__(self, model_path: str | None = None, device: str = "auto", batch_size: int = 8,
                 half: bool = False):
        import torch

        self.path = resolve_lama_path(model_path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.half = bool(half) and self.device.type == "cuda"
        try:
            with warnings.catch_warnings():  # torch 2.14 marks jit as deprecated; big-lama.pt is TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(self.path), map_location=self.device)
        except RuntimeError as e:
            raise ConfigError(f"lama backend: {self.path}: not a TorchScript file ({str(e).splitlines()[0]})") from None
        self.model.eval()
        self.model.to(self.device)
        if self.half:
            self.model.half()
        self.model_id = f"lama:{self.path.name}:sha256-{file_digest(self.path)}"
        log.info("loaded %s on %s", self.model_id, self.device)

    @staticmethod
    def padded_shape(h: int, w: int) -> tuple[int, int]:
        m = LAMA_PAD_MODULO
        return (h + (-h) % m, w + (-w) % m)

    @staticmethod
    def prepare(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CHW float32 image in 0..1 and 1HW {0,1} mask, padded like simple-lama."""
        _check_pair(img, mask)
        h, w = mask.shape
        ph, pw = LamaInpainter.padded_shape(h, w)
        x = np.transpose(img, (2, 0, 1)).astype(np.float32) / 255
        m = (mask[None] > 0).astype(np.float32)
        pad = ((0, 0), (0, ph - h), (0, pw - w))
        return np.pad(x, pad, mode="symmetric"), np.pad(m, pad, mode="symmetric")

    def inpaint(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, m in enumerate(masks):
            groups.setdefault(self.padded_shape(*m.shape[:2]), []).append(i)
        for shape in sorted(groups):
            idx = groups[shape]
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                prepared = [self.prepare(images[i], masks[i]) for i in chunk]
                x = torch.from_numpy(np.stack([p[0] for p in prepared])).to(self.device)
                m = torch.from_numpy(np.stack([p[1] for p in prepared])).to(self.device)
                if self.half:
                    x, m = x.half(), m.half()
                with torch.inference_mode():
                    y = self.model(x, m)
                y = y.float().permute(0, 2, 3, 1).cpu().numpy()
                for j, i in enumerate(chunk):
                    h, w = masks[i].shape[:2]
                    out[i] = np.clip(y[j, :h, :w] * 255, 0, 255).astype(np.uint8)
        return out  # type: ignore[return-value]


def _check_pair(img: np.ndarray, mask: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"inpaint: expected an RGB uint8 image, got {img.dtype} {img.shape}")
    if mask.shape != img.shape[:2]:
        raise ValueError(f"inpaint: mask {mask.shape} does not match image {img.shape[:2]}")


def make_inpainter(backend: str, *, opencv_method: str = "telea", opencv_radius: int = 5,
                   lama_model: str | None = None, device: str = "auto", batch_size: int = 8,
                   half: bool = False) -> Inpainter:
    if backend == "opencv":
        return OpenCVInpainter(opencv_method, opencv_radius)  # type: ignore[arg-type]
    if backend == "lama":
        return LamaInpainter(lama_model, device=device, batch_size=batch_size, half=half)
    raise ConfigError(f"inpaint backend: expected 'lama' or 'opencv', got {backend!r}")
