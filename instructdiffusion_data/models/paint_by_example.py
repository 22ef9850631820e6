"""PaintByExample (Yang et al. 2022) through diffusers 0.42: exemplar-guided inpainting.

diffusers 0.42 moved the pipeline to ``diffusers.pipelines.deprecated.paint_by_example`` and its
``from_pretrained`` no longer loads the published checkpoint ``Fantasy-Studio/Paint-by-Example``:
``model_index.json`` declares ``"image_encoder": ["paint_by_example", "PaintByExampleImageEncoder"]``
and ``diffusers.pipelines`` has no ``paint_by_example`` attribute any more, so the library name
resolves to nothing (docs/ieiw_replacement.md, PaintByExample). :func:`load_pipeline` therefore reads
``model_index.json`` itself and loads each component from its sub-folder with the class's own
``from_pretrained``, mapping the library names of the real layout
(``paint_by_example`` -> the deprecated module, ``stable_diffusion`` -> diffusers' module,
``diffusers`` / ``transformers``), then assembles the pipeline. The safety checker is not loaded
unless asked (it is irrelevant to data generation and costs 1.2 GB).

``model`` is a hub id (resolved with ``huggingface_hub.snapshot_download``, which honours
``HF_HUB_OFFLINE=1`` and the local cache) or a local folder in the same layout.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

PIPELINE_MODULE = "diffusers.pipelines.deprecated.paint_by_example"
# library names found in model_index.json files of PaintByExample checkpoints -> importable module
LIBRARIES = {
    "paint_by_example": PIPELINE_MODULE,
    "stable_diffusion": "diffusers.pipelines.stable_diffusion",
    "diffusers": "diffusers",
    "transformers": "transformers",
}
COMPONENTS = ("vae", "image_encoder", "unet", "scheduler", "feature_extractor")


def resolve_model_dir(model: str, *, local_files_only: bool | None = None) -> Path:
    p = Path(model)
    if p.is_dir():
        return p
    if p.is_absolute() or model.startswith("."):
        raise ConfigError(f"paint_by_example model: folder not found: {model}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=bool(local_files_only),
                                      allow_patterns=["*.json", "*.txt", "*.safetensors", "*.bin"]))
    except Exception as e:  # noqa: BLE001 - hub errors are many; report one line
        raise ConfigError(f"paint_by_example model {model!r}: cannot resolve ({type(e).__name__}: {e})") from None


def _component_class(library: str, class_name: str):
    module_name = LIBRARIES.get(library)
    if module_name is None:
        raise ConfigError(f"model_index.json: unknown library {library!r} for {class_name}")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"model_index.json: {module_name} has no class {class_name}")
    return cls


def load_pipeline(model: str, *, device: str | None = None, dtype: str = "auto",
                  load_safety_checker: bool = False, local_files_only: bool | None = None):
    """Load a PaintByExamplePipeline from a hub id or a folder in the published layout."""
    import torch

    root = resolve_model_dir(model, local_files_only=local_files_only)
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise ConfigError(f"paint_by_example model {model}: no model_index.json in {root}")
    spec = json.loads(index_file.read_text())
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        torch_dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    pipe_mod = importlib.import_module(PIPELINE_MODULE)
    parts = {}
    for name in COMPONENTS:
        entry = spec.get(name)
        if not entry or entry[0] is None:
            raise ConfigError(f"paint_by_example model {model}: model_index.json has no component {name!r}")
        cls = _component_class(entry[0], entry[1])
        kwargs = {}
        if name in ("vae", "image_encoder", "unet"):
            kwargs["torch_dtype"] = torch_dtype
        parts[name] = cls.from_pretrained(str(root / name), **kwargs)
    safety = None
    entry = spec.get("safety_checker")
    if load_safety_checker and entry and entry[0]:
        safety = _component_class(*entry).from_pretrained(str(root / "safety_checker"), torch_dtype=torch_dtype)
    pipe = pipe_mod.PaintByExamplePipeline(
        safety_checker=safety, requires_safety_checker=safety is not None, **parts)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    log.info("PaintByExample from %s on %s (%s)", root, device, torch_dtype)
    return pipe


class PaintByExampleEditor:
    """Batched edits: ``edit(images, masks, references, seeds) -> list of RGB uint8``.

    Inputs are resized to ``resolution`` (square, as the model was trained), outputs are resized
    back to each source's size. ``seeds`` give one ``torch.Generator`` per image, so an edit does
    not depend on the batch it ran in."""

    def __init__(self, model: str, *, device: str | None = None, dtype: str = "auto", steps: int = 50,
                 guidance_scale: float = 5.0, resolution: int = 512, local_files_only: bool | None = None):
        self.pipe = load_pipeline(model, device=device, dtype=dtype, local_files_only=local_files_only)
        self.device = str(self.pipe.device)
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.resolution = resolution

    def edit(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], references: Sequence[np.ndarray],
             seeds: Sequence[int]) -> list[np.ndarray]:
        import cv2
        import torch
        from PIL import Image

        r = self.resolution
        ims = [Image.fromarray(cv2.resize(im, (r, r), interpolation=cv2.INTER_AREA)) for im in images]
        mks = [Image.fromarray(cv2.resize((m > 0).astype(np.uint8) * 255, (r, r), interpolation=cv2.INTER_NEAREST))
               for m in masks]
        refs = [Image.fromarray(np.ascontiguousarray(ref)) for ref in references]
        gen_device = "cpu" if not self.device.startswith("cuda") else self.device
        gens = [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = self.pipe(example_image=refs, image=ims, mask_image=mks, num_inference_steps=self.steps,
                            guidance_scale=self.guidance_scale, generator=gens, output_type="np").images
        results = []
        for im, o in zip(images, out):
            arr = np.clip(np.asarray(o) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            results.append(cv2.resize(arr, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_CUBIC))
        return results
