"""Referring segmentation targets (paper 3.1, 4.1): the referred object(s) under a named colour at
alpha 0.5, the referring expression in the instruction. gRefCOCO multi-target expressions mask all
targets; no-target expressions leave the target identical to the source.

Reads ``meta.sentences`` (one drawn per variant), ``meta.targets`` [{rle | polygons}] and
``meta.no_target``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contracts import union_mask
from ..instructions import choose
from ..render import masks as M
from ..render.common import MaskRenderConfig, RenderStage, SourceImage, mask_row, object_phrase, pick_mask_color
from ..schema import Row


@dataclass
class RenderRefsegConfig(MaskRenderConfig):
    pass


class RenderRefseg(RenderStage):
    name = "render_refseg"
    Config = RenderRefsegConfig
    task = "referring_seg"

    def render(self, rec: Row, src: SourceImage, templates: list[str]) -> list[Row]:
        cfg = self.config
        meta = rec["meta"]
        rid = meta.get("record_id")
        h, w = src.rgb.shape[:2]
        h0, w0 = src.orig_size
        full = union_mask(meta.get("targets") or [], h0, w0, record=rid, where="targets")
        mask = M.resize_bool(full, (h, w))
        sentences = meta["sentences"]
        base = {k: v for k, v in meta.items() if k not in ("targets", "sentences")}
        rows = []
        for v in range(cfg.variants_per_record):
            rng = self.rng(rec["key"], v)
            s_idx = int(rng.integers(len(sentences)))
            color = pick_mask_color(src.rgb, mask, cfg, rng)
            t_idx, text = choose(templates, rng, color=color, object=object_phrase(sentences[s_idx]))
            rows.append(mask_row(rec, src, mask, color, cfg, variant=v, instruction=text,
                                 meta=dict(base, sentence=sentences[s_idx], sentence_index=s_idx, template=t_idx)))
        return rows


STAGE = RenderRefseg
