"""CLIP image embeddings through open_clip.

``ClipEmbedder(model_name, pretrained, device=None)`` builds the model with
``open_clip.create_model_and_transforms`` the way open_clip users do:

* ``ClipEmbedder("ViT-L-14", "openai")``: a built-in architecture and a pretrained tag (downloads
  through open_clip's own cache unless ``HF_HUB_OFFLINE=1``); the activation follows the tag (OpenAI's
  weights get QuickGELU, as they were trained; open_clip itself would only warn);
* ``ClipEmbedder("ViT-L-14-quickgelu", "/weights/ViT-L-14.pt")``: a local checkpoint file (OpenAI's own
  checkpoints need the ``-quickgelu`` architecture);
* ``ClipEmbedder("local-dir:/weights/clip")`` or ``"hf-hub:org/repo"`` (``pretrained`` is ignored);
* ``ClipEmbedder("my-tiny", None, model_config="my-tiny.json")``: a custom architecture from an
  open_clip config JSON (the file stem is the model name), registered with
  ``open_clip.add_model_config`` first. Tests build a tiny one, save its weights and load them back
  through this same path.

``embed_images(list of RGB uint8 arrays) -> float32 [N, D]`` and ``embed_texts(list of str)`` (the
model's text tower, for CLIP-Sim), L2-normalised, in batches of ``batch_size``; on a GPU the model runs in fp16 (``precision="fp16"``), on a CPU in fp32.
Preprocessing is the model's own eval transform (resize, centre crop, normalise).

Sharing embeddings within a run
-------------------------------
An image is embedded once per run and model: two mechanisms, both keyed by the model's ``model_id``.

* In the row: :func:`put_meta_embedding` stores a vector in ``meta["clip"][model_id][role]``
  (role ``"src"``, ``"tgt"``, ``"ref"``, ...) as ``"<sha1 of the image bytes, 16 hex>:<base64 of
  float16>"``; :func:`get_meta_embedding` returns it only when the hash matches the bytes given, so a
  stage that changed the image never reads a stale vector. This is what crosses Ray workers (each
  stage runs in its own processes). A 768-d vector costs ~2 KB of meta.
* In the process: :meth:`ClipEmbedder.embed_bytes` keeps an LRU cache (``cache_size`` entries,
  default 4096) keyed by ``(model_id, sha1(bytes))``, so the same image bytes seen twice by one
  worker (a source image shared by several variants) are embedded once.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)


def image_hash(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def encode_vector(vec: np.ndarray, data: bytes) -> str:
    """``"<sha1-16 of data>:<base64 float16>"``: one embedding tied to the image bytes it came from."""
    return f"{image_hash(data)}:{base64.b64encode(np.asarray(vec, np.float16).tobytes()).decode('ascii')}"


def decode_vector(text: str, data: bytes | None = None) -> np.ndarray | None:
    """The vector of :func:`encode_vector`; None when malformed or when ``data`` is given and differs."""
    if not isinstance(text, str) or ":" not in text:
        return None
    h, _, b64 = text.partition(":")
    if data is not None and h != image_hash(data):
        return None
    try:
        return np.frombuffer(base64.b64decode(b64), np.float16).astype(np.float32)
    except (ValueError, TypeError):
        return None


def put_meta_embedding(meta: dict, model_id: str, role: str, vec: np.ndarray, data: bytes) -> None:
    meta.setdefault("clip", {}).setdefault(model_id, {})[role] = encode_vector(vec, data)


def get_meta_embedding(meta: dict, model_id: str, role: str, data: bytes | None) -> np.ndarray | None:
    try:
        text = meta["clip"][model_id][role]
    except (KeyError, TypeError):
        return None
    return decode_vector(text, data)


def register_model_config(path: str | Path) -> str:
    """Register an open_clip architecture JSON (``embed_dim``, ``vision_cfg``, ``text_cfg``); returns
    its model name (the file stem)."""
    import open_clip

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"clip model_config: file not found: {p}")
    if p.stem not in open_clip.list_models():
        open_clip.add_model_config(p)
    if p.stem not in open_clip.list_models():
        raise ConfigError(f"{p}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    return p.stem


class ClipEmbedder:
    """L2-normalised open_clip image embeddings, batched, fp16 on GPU."""

    def __init__(self, model_name: str, pretrained: str | None, device: str | None = None, *,
                 model_config: str | None = None, batch_size: int = 32, cache_size: int = 4096):
        import open_clip
        import torch

        if model_config:
            registered = register_model_config(model_config)
            if registered != model_name and not model_name.startswith(("hf-hub:", "local-dir:")):
                raise ConfigError(f"clip model_config {model_config} defines '{registered}', not '{model_name}'")
        has_schema = model_name.startswith(("hf-hub:", "local-dir:"))
        if not has_schema and model_name not in open_clip.list_models():
            raise ConfigError(f"clip model '{model_name}' is not an open_clip architecture "
                              f"(register one with model_config, or see open_clip.list_models())")
        looks_like_file = bool(pretrained) and ("/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin",
                                                                                         ".safetensors")))
        if looks_like_file and not has_schema and not Path(pretrained).is_file():
            raise ConfigError(f"clip pretrained: checkpoint file not found: {pretrained}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = "fp16" if str(self.device).startswith("cuda") else "fp32"
        self.batch_size = max(1, int(batch_size))
        self.model_name = model_name
        self.pretrained = pretrained
        tag = Path(pretrained).name if pretrained and Path(pretrained).is_file() else (pretrained or "random")
        self.model_id = f"{model_name}:{tag}"
        # OpenAI's weights were trained with QuickGELU: open_clip's plain "ViT-L-14" config uses GELU and only
        # warns, so the activation follows the pretrained tag (a local OpenAI checkpoint file needs the
        # "-quickgelu" model name, e.g. ViT-L-14-quickgelu)
        quick_gelu = bool(not has_schema and pretrained and not looks_like_file
                          and open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu"))
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=None if has_schema else pretrained, precision=self.precision,
            device=self.device, force_quick_gelu=quick_gelu)
        self.model = model.eval()
        self.preprocess = preprocess
        self.dim = int(getattr(model.visual, "output_dim", 0) or self._probe_dim())
        self._tokenizer = None  # open_clip's, built on first embed_texts
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        log.info("open_clip %s on %s (%s), %d-d", self.model_id, self.device, self.precision, self.dim)

    def _probe_dim(self) -> int:
        return int(self.embed_images([np.zeros((32, 32, 3), np.uint8)]).shape[1])

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 arrays -> float32 [N, D], L2-normalised."""
        import torch
        from PIL import Image

        if len(images) == 0:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i:i + self.batch_size]
            x = torch.stack([self.preprocess(Image.fromarray(np.ascontiguousarray(im))) for im in chunk])
            with torch.inference_mode():
                f = self.model.encode_image(x.to(self.device, dtype))
                f = torch.nn.functional.normalize(f.float(), dim=-1)
            out.append(f.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> float32 [N, D], L2-normalised, with the model's own tokenizer
        (``open_clip.get_tokenizer``; texts longer than its context are truncated, as open_clip does)."""
        import open_clip
        import torch

        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(list(texts[i:i + self.batch_size])).to(self.device)
            with torch.inference_mode():
                f = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
            out.append(f.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def embed_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> embeddings, through the process-level cache (see the module doc)."""
        from ..imageio import decode

        keys = [(self.model_id, image_hash(b)) for b in blobs]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        uniq: dict[tuple[str, str], int] = {}
        for i in todo:
            uniq.setdefault(keys[i], i)
        if uniq:
            vecs = self.embed_images([decode(blobs[i]) for i in uniq.values()])
            for k, v in zip(uniq, vecs):
                self._cache[k] = v
        result = np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)
        for k in keys:
            self._cache.move_to_end(k)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result.astype(np.float32)

    def embed_rows(self, rows: list[dict[str, Any]], role: str, *, store: bool = False) -> list[np.ndarray | None]:
        """Embeddings of ``row[role]`` image bytes, read from meta when present (hash checked), else
        computed (cached); with ``store`` they are written back into each row's meta."""
        result: list[np.ndarray | None] = [None] * len(rows)
        need = []
        for i, r in enumerate(rows):
            data = r.get(role)
            if not data:
                continue
            v = get_meta_embedding(r.get("meta") or {}, self.model_id, role, data)
            if v is not None and v.shape[0] == self.dim:
                result[i] = v
            else:
                need.append(i)
        if need:
            vecs = self.embed_bytes([rows[i][role] for i in need])
            for i, v in zip(need, vecs):
                result[i] = v
                if store:
                    put_meta_embedding(rows[i].setdefault("meta", {}), self.model_id, role, v, rows[i][role])
        return result
