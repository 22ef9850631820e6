"""``adapt_caption``: rendered task rows -> pretraining-adaptation rows (paper 3.3, task ``adapt``).

The paper first fine-tunes Stable Diffusion, text to image, on rendered task targets captioned with
the image's caption plus a suffix ("... with a few different color patches here and there", "...
surrounded with a red circle"), so that the model can generate images with masks and marks at all.
This stage follows a renderer (``render_keypoints``, ``render_semseg``, ``render_refseg``) and turns each
of its rows into one such row:

- ``task`` = ``adapt``; ``tgt`` = the rendered target (unchanged bytes); ``src`` and ``mask`` removed;
  ``instruction`` (the ``txt`` member) = ``<caption><suffix>``; ``key`` =
  ``make_key(dataset, record_id, "adapt-v<variant>")`` (other than the task row's key);
- ``meta["adapt"]`` = ``{"from_task", "caption", "caption_source", "suffix_template", "suffixes"}``
  beside the renderer's meta (what was drawn, colours, provenance).

The image's caption, first found wins:

1. ``coco_captions``: COCO ``captions_*.json`` files in their released format
   (:mod:`..readers._coco_captions`), for rows whose ``meta.image_set`` is ``captions_image_set``
   (``coco``: COCO keypoints, COCO-Stuff, RefCOCO/+/g, gRefCOCO all number images by COCO id). An image
   has about five captions: ``caption_pick: random`` draws one per row (seeded by key), ``first`` takes
   the first in file order. ``caption_source``: ``coco:<file name>``.
2. ``fallback: blip2``: BLIP-2 (:mod:`..models.blip2`) on the source image (the row's ``src`` before it
   is removed). ``caption_source``: ``blip2:<model>``.
   ``fallback: annotations`` (the weight-free profile): built from the annotations: keypoint rows "a
   photo of a person" (one person) / "a photo of a group of people"; semantic segmentation "a photo of a
   dog, grass and sky" (the categories present, at most ``max_annotation_names``); referring segmentation
   "a photo with the left dog" (the expression). ``caption_source``: ``annotations``.
   ``fallback: none``: a row without a COCO caption is dropped (``adapt_caption: no caption``).

The suffix comes from the per-task template file ``<suffixes_dir>/<task>.txt`` (default
``configs/adapt_suffixes/``; ``<task>.expanded.txt`` when present, as for instructions): one template
per line with ``{caption}`` and the task's placeholders (``{color}``, ``{colors}``, ``{marks}``,
``{object}``, ``{n:one|many}``), one chosen per row (seeded). A target without any mark (an absent
category, a no-target expression: target == source) would teach the model nothing about marks: with
``require_mark`` (default) it is dropped (``adapt_caption: target has no mark``). Rows the renderer
dropped are kept dropped but become ``adapt`` rows too, so the whole output is of one task.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import check_path, rng, side_input
from ..errors import ConfigError, RecordError
from ..instructions import DEFAULT_DIR as INSTRUCTIONS_DIR
from ..instructions import Number, fill, placeholders, template_path, template_problem
from ..render.common import object_phrase
from ..schema import Row, drop, make_key
from ..stage import Stage, StageConfig
from ..text import with_article

log = logging.getLogger(__name__)

SOURCE_TASKS = ("keypoint", "semantic_seg", "referring_seg")
DEFAULT_SUFFIXES_DIR = INSTRUCTIONS_DIR.parent / "adapt_suffixes"
# placeholders each task's suffix templates may use
ALLOWED = {
    "keypoint": {"caption", "color", "colors", "marks", "n"},
    "semantic_seg": {"caption", "color", "object"},
    "referring_seg": {"caption", "color", "object"},
}
NO_CAPTION = "no caption"
NO_MARK = "target has no mark"


@dataclass
class Blip2Options:
    model: str = "Salesforce/blip2-opt-2.7b"  # hub id or local directory (save_pretrained layout)
    local_files_only: bool = False
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # GPU only; fp32 on CPU
    caption_batch_size: int = field(default=16, metadata=rng(1))
    max_new_tokens: int = field(default=30, metadata=rng(1))
    prompt: str | None = None


@dataclass
class AdaptCaptionConfig(StageConfig):
    # captions_<split>.json files (COCO release format); a changed file refuses a rerun (side input)
    coco_captions: list[str] = field(default_factory=list, metadata=side_input())
    captions_image_set: str = "coco"  # the COCO captions apply to rows whose meta.image_set is this
    caption_pick: Literal["random", "first"] = "random"  # which of an image's COCO captions
    fallback: Literal["annotations", "blip2", "none"] = "annotations"  # where an image has no COCO caption
    blip2: Blip2Options = field(default_factory=Blip2Options)
    max_annotation_names: int = field(default=4, metadata=rng(1))  # categories named in an annotation caption
    # default: configs/adapt_suffixes of the checkout (IDD_CONFIG_DIR)
    suffixes_dir: str | None = field(default=None, metadata=side_input())
    require_mark: bool = True  # drop a target without any mark (absent category, no-target expression)
    batch_size: int = 16


def clean_caption(text: str) -> str:
    """One line, no final full stop: "A man riding a horse. " -> "A man riding a horse"."""
    return " ".join(str(text).split()).rstrip(" .")


def join_words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def annotation_caption(row: Row, max_names: int = 4) -> str | None:
    """The weight-free caption of a task row's image, from what its annotations state (module docstring);
    None when they name nothing."""
    meta = row.get("meta") or {}
    task = row.get("task")
    if task == "keypoint":
        person = meta.get("person")
        if not isinstance(person, str):
            return None
        return "a photo of a person" if person == "the person" else "a photo of a group of people"
    if task == "semantic_seg":
        present = [p for p in meta.get("present") or [] if isinstance(p, str) and p.strip()]
        cat = meta.get("category")
        if isinstance(cat, str) and cat in present:  # the masked category first, the others in order
            present = [cat] + [p for p in present if p != cat]
        if not present:
            return None
        return "a photo of " + join_words([with_article(p) for p in present[:max_names]])
    if task == "referring_seg":
        sentence = meta.get("sentence")
        if not isinstance(sentence, str) or not sentence.strip():
            return None
        return "a photo with " + object_phrase(sentence)
    return None


def suffix_values(row: Row) -> dict:
    """The placeholder values of a task row's suffix templates (see :data:`ALLOWED`)."""
    meta = row.get("meta") or {}
    if row.get("task") == "keypoint":
        colours = [d.get("color") for d in meta.get("drawn") or [] if isinstance(d, dict) and d.get("color")]
        if not colours:
            return {}
        n = len(colours)
        marks = f"{with_article(colours[0])} circle" if n == 1 else f"{join_words(colours)} circles"
        return {"color": colours[0], "colors": join_words(colours), "marks": marks, "n": Number(n)}
    colour = meta.get("color")
    thing = meta.get("category") if row.get("task") == "semantic_seg" else meta.get("sentence")
    if not isinstance(colour, str) or not isinstance(thing, str):
        return {}
    return {"color": colour, "object": object_phrase(thing)}


def has_mark(row: Row) -> bool:
    meta = row.get("meta") or {}
    if row.get("task") == "keypoint":
        return bool(meta.get("drawn"))
    return bool(meta.get("mask_area"))


class AdaptCaption(Stage):
    name = "adapt_caption"
    Config = AdaptCaptionConfig
    process_dropped = True  # dropped task rows become (dropped) adapt rows: one task per output

    def __init__(self, config=None, *, seed: int = 0):
        super().__init__(config, seed=seed)
        c = self.config
        # resolved on the driver (Ray workers may run in another working directory): a resolved copy
        local = [os.path.abspath(os.path.expanduser(p)) if "://" not in p else p for p in c.coco_captions]
        sdir = os.path.abspath(os.path.expanduser(c.suffixes_dir)) if c.suffixes_dir else str(DEFAULT_SUFFIXES_DIR)
        blip = c.blip2
        if Path(blip.model).expanduser().is_dir():
            blip = dataclasses.replace(blip, model=str(Path(blip.model).expanduser().resolve()))
        self.config = dataclasses.replace(c, coco_captions=local, suffixes_dir=sdir, blip2=blip)

    def validate(self) -> None:
        c = self.config
        for i, p in enumerate(c.coco_captions):
            check_path(p, f"stages({self.name}).coco_captions[{i}]", kind="file")
        if c.suffixes_dir:
            check_path(c.suffixes_dir, f"stages({self.name}).suffixes_dir", kind="dir")
        for task in SOURCE_TASKS:
            self._check_templates(task)

    def _check_templates(self, task: str) -> list[str]:
        """The task's suffix templates (read afresh, not cached); a template that does not parse, has a
        placeholder the task cannot fill or lacks ``{caption}`` is one ConfigError line naming the file and
        line."""
        path = template_path(task, self.config.suffixes_dir or str(DEFAULT_SUFFIXES_DIR))
        if not path.is_file():
            raise ConfigError(f"{path}: adaptation suffix templates not found")
        templates = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            t = line.strip()
            if not t or t.startswith("#"):
                continue
            problem = template_problem(t)
            names = placeholders(t) if problem is None else set()
            extra = names - ALLOWED[task]
            if problem is None and extra:
                problem = (f"unknown placeholder {{{sorted(extra)[0]}}} (a {task} template may use "
                           f"{', '.join(sorted(ALLOWED[task]))})")
            if problem is None and "caption" not in names:
                problem = "a suffix template must contain {caption}"
            if problem:
                raise ConfigError(f"{path}:{lineno}: {problem}")
            templates.append(t)
        if not templates:
            raise ConfigError(f"{path}: no templates in file")
        return templates

    def setup(self) -> None:
        from ..readers._coco_captions import CaptionIndex, read_captions

        c = self.config
        self.index = read_captions(c.coco_captions, f"stages({self.name}).coco_captions") if c.coco_captions \
            else CaptionIndex()
        self.caption_files = [Path(p).name for p in c.coco_captions]
        self.templates = {t: self._check_templates(t) for t in SOURCE_TASKS}
        self.captioner = None
        if c.fallback == "blip2":
            from ..models.blip2 import Blip2Captioner

            b = c.blip2
            self.captioner = Blip2Captioner(b.model, device=b.device, dtype=b.dtype,
                                            local_files_only=b.local_files_only, batch_size=b.caption_batch_size,
                                            max_new_tokens=b.max_new_tokens, prompt=b.prompt)

    # -- captions ----------------------------------------------------------------------------
    def coco_caption(self, row: Row) -> tuple[str, str] | None:
        """(caption, source) from the COCO captions files, or None."""
        meta = row["meta"]
        if not len(self.index) or meta.get("image_set") != self.config.captions_image_set:
            return None
        found = self.index.get(meta.get("image_id"))
        if not found:
            return None
        i = 0 if self.config.caption_pick == "first" else int(self.rng(row["key"], "caption").integers(len(found)))
        where = self.caption_files[0] if len(self.caption_files) == 1 else "+".join(self.caption_files)
        return found[i], f"coco:{where}"

    def blip2_captions(self, rows: list[Row]) -> dict[int, str]:
        """BLIP-2 captions of the source images of ``rows`` (by position); a row without a decodable
        source is left out."""
        from ..imageio import decode

        images, owners = [], []
        for i, row in enumerate(rows):
            try:
                images.append(decode(row["src"], record=str(row["meta"].get("record_id"))))
                owners.append(i)
            except (RecordError, ValueError) as e:  # the row is dropped below (no caption)
                log.debug("%s: cannot decode the source of %s: %s", self.name, row.get("key"), e)
        texts = self.captioner.caption(images) if images else []
        return {i: t for i, t in zip(owners, texts) if isinstance(t, str) and t.strip()}

    # -- rows --------------------------------------------------------------------------------
    def process(self, rows: list[Row]) -> list[Row]:
        c = self.config
        found: dict[int, tuple[str, str]] = {}
        need_blip: list[int] = []
        for i, row in enumerate(rows):
            if not row["keep"] or row.get("task") not in SOURCE_TASKS:
                continue
            hit = self.coco_caption(row)
            if hit:
                found[i] = hit
            elif c.fallback == "annotations":
                text = annotation_caption(row, c.max_annotation_names)
                if text:
                    found[i] = (text, "annotations")
            elif c.fallback == "blip2" and row.get("src"):
                need_blip.append(i)
        if need_blip:
            got = self.blip2_captions([rows[i] for i in need_blip])
            for j, i in enumerate(need_blip):
                if j in got:
                    found[i] = (got[j], f"blip2:{self.captioner.model_id}")
        return [self._adapt(row, found.get(i)) for i, row in enumerate(rows)]

    def _adapt(self, row: Row, caption: tuple[str, str] | None) -> Row:
        meta = row["meta"]
        from_task = row.get("task")
        info: dict = {"from_task": from_task}
        if row["keep"]:
            self._describe(row, caption, info)
        variant = meta.get("variant")
        row["key"] = make_key(row["dataset"], meta.get("record_id"), f"adapt-v{variant}" if variant is not None
                              else "adapt-rec")
        row.update(task="adapt", src=None, mask=None)
        meta["adapt"] = info
        return row

    def _describe(self, row: Row, caption: tuple[str, str] | None, info: dict) -> None:
        """Set the row's caption text (``instruction``) and ``info``, or drop it with the reason."""
        meta = row["meta"]
        task = row.get("task")
        rid = meta.get("record_id")
        if task not in SOURCE_TASKS:
            drop(row, f"{self.name}: not a task row", task=task, expected="|".join(SOURCE_TASKS))
        elif not row.get("tgt"):
            drop(row, f"{self.name}: no target image", record=rid)
        elif self.config.require_mark and not has_mark(row):
            drop(row, f"{self.name}: {NO_MARK}", record=rid)
        elif caption is None:
            drop(row, f"{self.name}: {NO_CAPTION}", record=rid, image_id=meta.get("image_id"),
                 fallback=self.config.fallback)
        elif not (values := suffix_values(row)):
            drop(row, f"{self.name}: nothing drawn to describe", record=rid)
        else:
            text, source = caption
            templates = self.templates[task]
            t_idx = int(self.rng(row["key"], "suffix").integers(len(templates)))
            base = clean_caption(text)
            row["instruction"] = fill(templates[t_idx], caption=base, **values)
            info.update(caption=base, caption_source=source, suffix_template=t_idx,
                        suffixes=template_path(task, self.config.suffixes_dir).name)


STAGE = AdaptCaption
