"""``caption``: captions of the source, the edited region, the target and the reference patch.

Writes ``meta["captions"]`` = ``{target: text}`` for the configured ``targets``:

- ``src``: the whole source image (``row["src"]``, or the file ``meta["file"]`` when no bytes yet);
- ``src_region``: the edited region of the source, cropped from the mask (``row["mask"]``, PNG), else
  ``meta["region"]["bbox"]`` / ``meta["bbox"]`` (``[x, y, w, h]`` in the coordinates of
  ``meta["width"]`` x ``meta["height"]``; scaled to the decoded image);
- ``tgt`` and ``tgt_region``: the same on ``row["tgt"]`` (the edited image);
- ``reference``: the reference patch of a replacement, ``meta["reference"]`` as ``retrieve_reference``
  writes it and :class:`..contracts.ReferencePatch` reads it: ``patch_png_b64`` (RGBA PNG, base64,
  alpha = object mask), else ``file`` cropped to ``bbox`` ``[x, y, w, h]``, plus ``label``;

and ``meta["caption_provenance"]`` = ``{"backend", "model", "sources": {target: how}}``.

Backends:

- ``blip2``: BLIP-2 (:mod:`instructdiffusion_data.models.blip2`; hub id or local path in ``model``;
  ``num_gpus``/``concurrency`` make it a Ray actor pool; fp16/bf16 on GPU). An empty caption drops
  the row (class ``caption: empty caption``, detail ``target=src_region``).
- ``annotations``: weight-free, from what the dataset states: the object is PhraseCut's
  ``meta["phrase"]``, ``meta["src_label"]``, OpenImages' ``meta["region"]["label"]`` or
  ``meta["category"]``; the replacement is ``meta["ref_label"]`` or ``meta["reference"]["label"]``.
  Region captions are the label itself; whole-image captions are built from it ("a photo with the
  dog" / "a photo without the dog" for removal targets). ``sources`` says which field each caption
  came from (``"phrase"``, ``"region.label"``, ..., ``"+template"`` for built sentences); a caption
  the annotations cannot give is listed as ``"unavailable"`` and left out.

Interface used by the ``llm_instruction`` stage (and the replacement pipeline): captions keys
``src``, ``src_region``, ``tgt``, ``tgt_region``, ``reference``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..config import rng
from ..contracts import ReferencePatch, record_drop
from ..errors import ConfigError, RecordError
from ..imageio import decode, decode_gray, read_bytes, resize_mask
from ..llm.prompts import label_text, strip_article
from ..schema import Row, drop
from ..stage import Stage, StageConfig

log = logging.getLogger(__name__)

TARGETS = ("src", "src_region", "tgt", "tgt_region", "reference")


@dataclass
class CaptionConfig(StageConfig):
    backend: Literal["blip2", "annotations"] = "annotations"
    targets: list[str] = field(default_factory=lambda: ["src", "src_region", "tgt"])
    # blip2 backend
    model: str = "Salesforce/blip2-opt-2.7b"  # hub id or local directory (save_pretrained layout)
    local_files_only: bool = False
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # GPU only; fp32 on CPU
    caption_batch_size: int = field(default=16, metadata=rng(1))  # images per generate() call
    max_new_tokens: int = field(default=30, metadata=rng(1))
    min_new_tokens: int = field(default=0, metadata=rng(0))
    num_beams: int = field(default=1, metadata=rng(1))
    prompt: str | None = None  # e.g. "a photo of"
    # regions
    # context around a region crop, fraction of its size per side
    pad_frac: float = field(default=0.1, metadata=rng(0, 2))
    region_background: Literal["keep", "grey"] = "keep"  # grey: blank out what lies outside the mask
    batch_size: int = 16


def _clean(text) -> str | None:
    return " ".join(text.split()) if isinstance(text, str) and text.strip() else None


def object_label(meta: dict) -> tuple[str | None, str]:
    """(the edited object as the annotations name it, which field)."""
    region = meta.get("region") if isinstance(meta.get("region"), dict) else {}
    for value, how in ((meta.get("phrase"), "phrase"), (meta.get("src_label"), "src_label"),
                       (region.get("label"), "region.label"), (meta.get("category"), "category"),
                       (meta.get("category_name"), "category_name")):
        if _clean(value):
            text = strip_article(_clean(value))
            return (label_text(text) if how in ("region.label", "category", "category_name") else text), how
    return None, "unavailable"


def reference_label(meta: dict) -> tuple[str | None, str]:
    try:
        ref = ReferencePatch.from_meta(meta)
    except RecordError:
        ref = None
    for value, how in ((meta.get("ref_label"), "ref_label"), (ref.label if ref else None, "reference.label")):
        if _clean(value):
            return label_text(strip_article(_clean(value))), how
    return None, "unavailable"


def annotation_captions(row: Row, targets: list[str]) -> tuple[dict, dict]:
    """Captions from annotations (see module docstring): ({target: text}, {target: source field})."""
    meta = row["meta"]
    obj, how = object_label(meta)
    ref, rhow = reference_label(meta)
    task = row.get("task")
    with_obj = f"a photo with the {obj}" if obj else None
    without_obj = f"a photo without the {obj}" if obj else None
    table = {
        "src_region": (obj, how) if task != "edit_add" else (None, "unavailable"),
        "src": ((without_obj if task == "edit_add" else with_obj), f"{how}+template"),
        "tgt_region": {"edit_add": (obj, how), "edit_replace": (ref, rhow)}.get(task, (None, "unavailable")),
        "tgt": {"edit_remove": (without_obj, f"{how}+template"), "edit_add": (with_obj, f"{how}+template"),
                "edit_replace": ((f"a photo with the {ref}" if ref else None), f"{rhow}+template")}.get(
            task, (None, "unavailable")),
        "reference": (ref, rhow),
    }
    caps, sources = {}, {}
    for t in targets:
        text, src = table[t]
        if text:
            caps[t] = text
            sources[t] = src
        else:
            sources[t] = "unavailable"
    return caps, sources


class CaptionStage(Stage):
    name = "caption"
    Config = CaptionConfig

    def validate(self) -> None:
        c = self.config
        bad = [t for t in c.targets if t not in TARGETS]
        if bad or not c.targets:
            raise ConfigError(f"stages({self.name}).targets: expected some of {list(TARGETS)}, got {c.targets!r}")
        if c.min_new_tokens > c.max_new_tokens:
            raise ConfigError(f"stages({self.name}).min_new_tokens: must not exceed max_new_tokens "
                              f"({c.max_new_tokens}), got {c.min_new_tokens}")
        if c.backend == "blip2":
            from pathlib import Path

            from ..config import check_path

            if c.model.startswith(("/", "./", "../", "~")):
                check_path(str(Path(c.model).expanduser()), f"stages({self.name}).model", kind="dir")
        if c.backend == "blip2" and not (c.concurrency or c.num_gpus):
            log.warning("stages(%s): backend blip2 without concurrency or num_gpus runs as Ray tasks that load "
                        "the model for every batch; set concurrency (CPU) or num_gpus (GPU) for an actor pool",
                        self.name)

    def __init__(self, config=None, *, seed: int = 0):
        super().__init__(config, seed=seed)
        from pathlib import Path

        local = Path(self.config.model).expanduser()
        if self.config.backend == "blip2" and local.is_dir():
            # a local model folder, resolved on the driver (Ray workers may run elsewhere): a resolved copy
            # of the config, the caller's config is left as it was
            self.config = dataclasses.replace(self.config, model=str(local.resolve()))

    def setup(self) -> None:
        self.captioner = None
        if self.config.backend == "blip2":
            from ..models.blip2 import Blip2Captioner

            c = self.config
            self.captioner = Blip2Captioner(c.model, device=c.device, dtype=c.dtype, local_files_only=c.local_files_only,
                                            batch_size=c.caption_batch_size, max_new_tokens=c.max_new_tokens,
                                            min_new_tokens=c.min_new_tokens, num_beams=c.num_beams, prompt=c.prompt)

    def process(self, rows: list[Row]) -> list[Row]:
        if self.config.backend == "annotations":
            for row in rows:
                caps, sources = annotation_captions(row, self.config.targets)
                row["meta"]["captions"] = {**(row["meta"].get("captions") or {}), **caps}
                row["meta"]["caption_provenance"] = {"backend": "annotations", "sources": sources}
            return rows
        return self._blip2(rows)

    # -- BLIP-2 ------------------------------------------------------------------------------
    def _blip2(self, rows: list[Row]) -> list[Row]:
        crops: list[np.ndarray] = []
        owners: list[tuple[int, str]] = []
        failed: dict[int, Exception] = {}
        for i, row in enumerate(rows):
            try:
                for t, img in self.images(row).items():
                    crops.append(img)
                    owners.append((i, t))
            except (RecordError, ValueError) as e:
                failed[i] = e
        texts = self.captioner.caption(crops) if crops else []
        found: dict[int, dict] = {}
        for (i, t), text in zip(owners, texts):
            found.setdefault(i, {})[t] = text
        for i, row in enumerate(rows):
            if i in failed:
                e = failed[i]
                if isinstance(e, RecordError):
                    record_drop(row, self.name, e)
                else:
                    drop(row, f"{self.name}: cannot cut the image to caption", error=str(e)[:300])
                continue
            caps = found.get(i, {})
            row["meta"]["captions"] = {**(row["meta"].get("captions") or {}), **caps}
            row["meta"]["caption_provenance"] = {"backend": "blip2", "model": self.captioner.model_id,
                                                 "sources": {t: "blip2" for t in caps}}
            empty = [t for t in self.config.targets if t in caps and not caps[t]]
            if empty:
                drop(row, f"{self.name}: empty caption", target=empty[0])
        return rows

    def images(self, row: Row) -> dict[str, np.ndarray]:
        """The pixels to caption for each target of this row."""
        c = self.config
        meta = row["meta"]
        rid = str(meta.get("record_id", row["key"]))
        out: dict[str, np.ndarray] = {}
        src = tgt = None
        need = set(c.targets)
        if need & {"src", "src_region"}:
            data = row.get("src") or (read_bytes(meta["file"], rid) if meta.get("file") else None)
            if not data:
                raise RecordError("no source image to caption", record=rid)
            src = decode(data, record=rid)
        if need & {"tgt", "tgt_region"}:
            if not row.get("tgt"):
                raise RecordError("no target image to caption", record=rid)
            tgt = decode(row["tgt"], record=rid)
        from ..models.blip2 import crop_region

        for t in c.targets:
            if t == "src":
                out[t] = src
            elif t == "tgt":
                out[t] = tgt
            elif t in ("src_region", "tgt_region"):
                img = src if t == "src_region" else tgt
                box, mask = self.region(row, img.shape[:2])
                out[t] = crop_region(img, box=box, mask=mask, pad_frac=c.pad_frac, background=c.region_background)
            elif t == "reference":
                out[t] = self.reference_patch(meta, rid)
        return out

    def reference_patch(self, meta: dict, rid: str) -> np.ndarray:
        """The reference patch (:class:`..contracts.ReferencePatch`): the embedded RGBA patch (with
        ``region_background: grey`` the pixels outside the object are grey), else the ``bbox`` of the
        reference's ``file``."""
        ref = ReferencePatch.from_meta(meta, record=rid)
        if ref is None or not ref.has_pixels:
            raise RecordError("no reference patch to caption", record=rid, field="reference")
        grey = self.config.region_background == "grey"
        return ref.rgb((128, 128, 128) if grey else None, record=rid, alpha_min=1)

    def region(self, row: Row, shape: tuple[int, int]) -> tuple[list | None, np.ndarray | None]:
        """(box, mask) of the edited region in an image of ``shape`` (h, w)."""
        meta = row["meta"]
        h, w = shape
        if row.get("mask"):
            mask = decode_gray(row["mask"], record=str(meta.get("record_id")))
            if mask.shape != (h, w):
                mask = resize_mask(mask, (h, w))
            return None, mask
        region = meta.get("region") if isinstance(meta.get("region"), dict) else {}
        box = region.get("bbox") or meta.get("bbox")
        if not box or len(box) != 4:
            raise RecordError("no region to caption", record=str(meta.get("record_id")), field="mask")
        sx = w / float(meta.get("width") or w)
        sy = h / float(meta.get("height") or h)
        return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], None


STAGE = CaptionStage
