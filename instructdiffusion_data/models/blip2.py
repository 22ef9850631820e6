"""BLIP-2 captions through transformers (``Blip2ForConditionalGeneration`` + ``Blip2Processor``).

``Blip2Captioner(model="Salesforce/blip2-opt-2.7b")`` loads a hub id (downloaded into the Hugging
Face cache unless ``HF_HUB_OFFLINE=1`` / ``local_files_only=True``) or a local directory written by
``save_pretrained`` (model and processor in the same folder). On a GPU the model runs in fp16 (or
bf16, ``dtype="bfloat16"``); on a CPU in fp32.

:meth:`Blip2Captioner.caption` takes RGB uint8 arrays and returns one caption each, in batches of
``batch_size``, greedy or beam search (``num_beams``), with an optional text ``prompt`` (e.g.
``"a photo of"``; the prompt is not repeated in the returned caption). :func:`crop_region` cuts the
region of an image given a box ``[x, y, w, h]`` or a mask, with context padding, optionally greying
out what is outside the mask: BLIP-2 then describes the object rather than the scene.

Tests build a tiny BLIP-2 (tiny ViT, Q-Former and OPT; ``image_token_index`` set; a tiny byte-level
BPE tokenizer), save it and load it back through this class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Salesforce/blip2-opt-2.7b"


def resolve_dtype(dtype: str, device_type: str):
    import torch

    if device_type != "cuda":
        return torch.float32  # half precision on a CPU is slow or unsupported for these kernels
    return {"auto": torch.float16, "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}[dtype]


class Blip2Captioner:
    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
                 local_files_only: bool = False, batch_size: int = 8, max_new_tokens: int = 30,
                 min_new_tokens: int = 0, num_beams: int = 1, prompt: str | None = None,
                 revision: str | None = None):
        import torch
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device.type)
        self.batch_size = max(1, batch_size)
        self.gen_kwargs = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens,
                           "num_beams": num_beams, "do_sample": False}
        self.prompt = prompt or None
        src = str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model
        kw = {"local_files_only": local_files_only}
        if revision:
            kw["revision"] = revision
        self.processor = Blip2Processor.from_pretrained(src, **kw)
        self.model = Blip2ForConditionalGeneration.from_pretrained(src, dtype=self.dtype, **kw)
        self.model.to(self.device).eval()
        if getattr(self.processor, "num_query_tokens", None) is None:
            # older hub snapshots lack it in processor_config.json; the processor then adds no image
            # tokens to a text prompt and generate() cannot place the query embeddings
            self.processor.num_query_tokens = self.model.config.num_query_tokens
        self.model_id = model if not Path(model).expanduser().is_dir() else f"local:{Path(model).name}"
        log.info("loaded BLIP-2 %s on %s (%s)", model, self.device, str(self.dtype).replace("torch.", ""))

    def caption(self, images: Sequence[np.ndarray]) -> list[str]:
        """One caption per RGB uint8 image (stripped, single-spaced; may be empty)."""
        import torch
        from PIL import Image

        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            chunk = [Image.fromarray(np.ascontiguousarray(a)) for a in images[i:i + self.batch_size]]
            if self.prompt:
                inputs = self.processor(images=chunk, text=[self.prompt] * len(chunk), return_tensors="pt",
                                        padding=True)
            else:
                inputs = self.processor(images=chunk, return_tensors="pt")
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items()}
            with torch.inference_mode():
                ids = self.model.generate(**inputs, **self.gen_kwargs)
            # generate returns the prompt (image tokens, BOS, prompt text) followed by the new tokens
            n_in = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
            if n_in and ids.shape[1] >= n_in:
                ids = ids[:, n_in:]
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            out.extend(" ".join(t.split()) for t in texts)
        return out


def crop_region(img: np.ndarray, *, box: Sequence[float] | None = None, mask: np.ndarray | None = None,
                pad_frac: float = 0.1, background: Literal["keep", "grey"] = "keep",
                min_side: int = 8) -> np.ndarray:
    """The region of ``img`` given a box ``[x, y, w, h]`` (pixels) or a mask (same size as ``img``),
    enlarged by ``pad_frac`` of its size on each side and clipped to the image. With
    ``background="grey"`` and a mask, pixels outside the mask are set to mid-grey.
    Raises ValueError for an empty region."""
    h, w = img.shape[:2]
    if mask is not None:
        if mask.shape[:2] != (h, w):
            raise ValueError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image {w}x{h}")
        ys, xs = np.nonzero(mask)
        if not len(xs):
            raise ValueError("region mask is empty")
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    elif box is not None:
        x0, y0 = float(box[0]), float(box[1])
        x1, y1 = x0 + float(box[2]), y0 + float(box[3])
    else:
        return img
    pw, ph = (x1 - x0) * pad_frac, (y1 - y0) * pad_frac
    xa, ya = max(0, int(np.floor(x0 - pw))), max(0, int(np.floor(y0 - ph)))
    xb, yb = min(w, int(np.ceil(x1 + pw))), min(h, int(np.ceil(y1 + ph)))
    if xb - xa < 1 or yb - ya < 1:
        raise ValueError(f"region box {list(box) if box is not None else [x0, y0, x1 - x0, y1 - y0]} is empty "
                         f"inside the {w}x{h} image")
    crop = img[ya:yb, xa:xb].copy()
    if background == "grey" and mask is not None:
        crop[mask[ya:yb, xa:xb] == 0] = 128
    if min(crop.shape[:2]) < min_side:  # BLIP's processor resizes anyway; avoid degenerate 1-px crops
        import cv2

        s = min_side / min(crop.shape[:2])
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))),
                          interpolation=cv2.INTER_LINEAR)
    return crop
