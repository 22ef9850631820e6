"""Demo MagicBrush: ``magicbrush/data/train-00000-of-00001.parquet`` with the Hugging Face columns
``img_id``, ``turn_index``, ``source_img``, ``mask_img``, ``instruction``, ``target_img`` (images as
``{bytes, path}`` structs). Sessions have 1-3 turns; each turn's source is the previous turn's
target. ``mask_img`` is the source image made transparent over the edited region. One turn has a
corrupt target image (an unreadable row, dropped with its reason)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import imageio
from . import _figures as fig

SIZE = 256


def _png_rgba(rgb: np.ndarray, hole: np.ndarray) -> bytes:
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    bgra[..., 3] = np.where(hole > 0, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", bgra)
    return buf.tobytes()


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "magicbrush" / "data"
    rng = np.random.default_rng([seed, 302])
    rows = []
    sessions = max(3, n // 6)
    for s in range(sessions):
        img_id = str(100000 + int(rng.integers(0, 900000)))
        current = None
        for t in range(1, int(rng.integers(1, 4)) + 1):
            e = fig.edit_pair(rng, SIZE, SIZE)
            src = e["src"] if current is None else current
            # apply the edit's changed region onto the running image, so turns chain
            m = e["mask"] > 0
            tgt = src.copy()
            tgt[m] = e["tgt"][m]
            if not m.any() or (tgt == src).all():
                tgt = e["tgt"]
            bad = s == 1 and t == 1
            rows.append({"img_id": img_id, "turn_index": t,
                         "source_img": {"bytes": imageio.encode_png(src), "path": None},
                         "mask_img": {"bytes": _png_rgba(src, e["mask"]), "path": None},
                         "instruction": e["instruction"].capitalize(),
                         "target_img": {"bytes": b"\x89PNG\r\n\x1a\n-corrupt-" if bad else imageio.encode_png(tgt),
                                        "path": None}})
            current = tgt
    img_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("img_id", pa.string()), ("turn_index", pa.int32()), ("source_img", img_t), ("mask_img", img_t),
                        ("instruction", pa.string()), ("target_img", img_t)])
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "train-00000-of-00001.parquet", row_group_size=8)
    return {"sessions": sessions, "turns": len(rows)}
