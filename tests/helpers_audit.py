"""Small real outputs for the auditor tests, written with the production ShardWriter (format 2).

``build_outputs(root)`` writes four outputs shaped like the demo's: removal/addition pairs with masks,
scores and the quality filter's thresholds (some dropped by the filter's rule classes with value and
threshold as details, one record without image), replacements with a reference patch, keypoints, and an
alignment set (groups of candidates at several guidance scales). Source paths in meta carry root tokens
(``{source.images}/0.jpg``) that the manifest's ``roots`` map back, as ``idd run`` writes them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from instructdiffusion_data.imageio import encode_jpeg, encode_png
from instructdiffusion_data.schema import drop, make_key, new_row
from instructdiffusion_data.writer import ShardWriter

COLOURS = [(220, 60, 60), (60, 160, 70), (50, 90, 220), (230, 190, 40), (150, 70, 190), (40, 180, 190)]


def scene(seed: int, w: int = 96, h: int = 72) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), np.full_like(x, 90 + 20 * (seed % 5))], -1).astype(np.uint8)
    for _ in range(2):
        c = COLOURS[int(rng.integers(len(COLOURS)))]
        cv2.rectangle(base, (int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))),
                      (int(rng.integers(w // 2, w)), int(rng.integers(h // 2, h))), c, -1)
    return base


def circle_mask(w: int = 96, h: int = 72, cx: int = 48, cy: int = 36, r: int = 16) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (cx, cy), r, 255, -1)
    return m


ROOTS = {"source.images": "/data/phrasecut/images", "source.sa1b": "/data/sa1b", "source.coco": "/data/coco"}
THRESHOLDS = {"aesthetic_tgt_min": 5.0, "giqa_tgt_min": 0.3}


def removal_rows(n: int = 6) -> list[dict]:
    rows = []
    for i in range(n):
        src = scene(i)
        mask = circle_mask(cx=30 + 5 * i)
        tgt = src.copy()
        tgt[mask > 0] = (128, 128, 128)
        phrase = ["red car", "green bench", "blue sign", "yellow kite", "purple umbrella", "teal bag"][i % 6]
        scores = {"aesthetic_src": 5.5 + 0.2 * i, "aesthetic_tgt": 4.0 + 0.4 * i, "giqa_tgt": 0.2 + 0.05 * i}
        pair = f"phrasecut-{i}"
        for task, s, t, instr in (("edit_remove", src, tgt, f"remove the {phrase}"),
                                  ("edit_add", tgt, src, f"add a {phrase}")):
            failed = [f"{sc} below minimum" for sc in ("aesthetic_tgt", "giqa_tgt") if scores[sc] < THRESHOLDS[f"{sc}_min"]]
            filt = {"profile": "weightfree", "thresholds": dict(THRESHOLDS), "failed": failed, "prior_drop": None}
            meta = {"file": f"{{source.images}}/{i}.jpg", "record_id": str(i), "pair_id": pair,
                    "scores": scores, "filter": filt, "seed": 1000 + i, "model": "opencv-telea"}
            row = new_row(key=make_key("phrasecut", i, task), task=task, dataset="phrasecut", src=encode_jpeg(s),
                          tgt=encode_jpeg(t), mask=encode_png(mask), instruction=instr, meta=meta)
            for sc in ("aesthetic_tgt", "giqa_tgt"):
                if scores[sc] < THRESHOLDS[f"{sc}_min"]:
                    drop(row, f"{sc} below minimum", value=round(scores[sc], 6), threshold=THRESHOLDS[f"{sc}_min"])
            rows.append(row)
    bad = new_row(key=make_key("phrasecut", "missing", "rec"), task="edit_remove", dataset="phrasecut",
                  meta={"file": "{source.images}/missing.jpg", "record_id": "missing"})
    rows.append(drop(bad, "image file missing", file="{source.images}/missing.jpg", record="missing"))
    return rows


def replacement_rows(n: int = 4) -> list[dict]:
    rows = []
    for i in range(n):
        src = scene(50 + i)
        mask = circle_mask(cx=48, cy=36, r=14)
        tgt = src.copy()
        tgt[mask > 0] = COLOURS[i % len(COLOURS)]
        ref_key = make_key("sa1b", f"patch{i}", "ref")
        meta = {"file": f"{{source.sa1b}}/{i}.jpg", "record_id": str(i), "scores": {"aesthetic_tgt": 5.2 + i * 0.3},
                "reference": {"key": ref_key, "bbox": [4, 4, 32, 32], "label": "cat", "image_id": str(i + 9),
                              "dataset": "sa1b", "source_image": f"{{source.sa1b}}/{i + 9}.jpg"},
                "captions": {"src": "a dog", "ref": "a cat"}}
        rows.append(new_row(key=make_key("sa1b", i, "replace"), task="edit_replace", dataset="sa1b",
                            src=encode_jpeg(src), tgt=encode_jpeg(tgt), mask=encode_png(mask),
                            instruction=f"change the dog to a cat number {i}", meta=meta))
        patch = np.full((32, 32, 3), COLOURS[i % len(COLOURS)], np.uint8)
        rows.append(drop(new_row(key=ref_key, task="edit_replace", dataset="sa1b-gallery", src=encode_png(patch),
                                 tgt=encode_png(patch), instruction="reference patch", meta={"gallery": True}),
                         "gallery patch", note="not a training pair"))
    return rows


def keypoint_rows(n: int = 5) -> list[dict]:
    rows = []
    for i in range(n):
        src = scene(100 + i)
        tgt = src.copy()
        cv2.circle(tgt, (20 + 10 * i, 30), 5, (255, 0, 0), -1)
        rows.append(new_row(key=make_key("coco", 500 + i, "kp0"), task="keypoint", dataset="coco",
                            src=encode_jpeg(src), tgt=encode_jpeg(tgt),
                            instruction=f"circle the left shoulder of the person in red ({i})",
                            meta={"file": f"{{source.coco}}/{500 + i}.jpg", "record_id": str(500 + i),
                                  "joints": [{"name": "left shoulder", "x": 20 + 10 * i, "y": 30, "v": 2}],
                                  "colours": ["red"], "seed": 7}))
    return rows


def alignment_rows(groups: int = 3, scales=(3.0, 5.0, 7.5, 10.0)) -> list[dict]:
    rows = []
    for g in range(groups):
        src = scene(200 + g)
        for s in scales:
            tgt = np.clip(src.astype(np.int16) + int(s * 8), 0, 255).astype(np.uint8)
            rows.append(new_row(key=make_key("bench", g, f"gs{s}"), task="edit", dataset="bench",
                                src=encode_jpeg(src), tgt=encode_jpeg(tgt), instruction=f"make it brighter ({g})",
                                meta={"record_id": str(g), "group_id": f"bench-{g}", "guidance_scale": s,
                                      "seed": 42}))
    return rows


def write_output(out: Path, rows: list[dict], *, name: str, per_shard: int = 100,
                 roots: dict[str, str] | None = None) -> Path:
    w = ShardWriter(out)
    for i in range(0, len(rows), per_shard):
        w.write_shard(i // per_shard, rows[i:i + per_shard])
    w.write_manifest(config={"name": name}, extra={"name": name, "version": out.name, "mixture_weight": 1.0,
                                                   "roots": dict(ROOTS if roots is None else roots)})
    return out


def make_format1(output_dir: Path) -> None:
    """Rewrite an output's sidecars as format 1 wrote them: no drop_class / drop_detail / typed score
    columns, and the drop reasons as text with the numbers in it (``aesthetic_tgt<5.0``)."""
    import json

    import pyarrow.parquet as pq

    from instructdiffusion_data.schema import SCORE_COLUMNS

    for p in sorted(output_dir.glob("*/*.parquet")):
        t = pq.read_table(p)
        rows = t.to_pylist()
        for r in rows:
            parts = []
            for d in r.get("drop_detail") or []:
                doc = json.loads(d)
                cls = doc.pop("class")
                if cls.endswith(" below minimum"):
                    parts.append(f"{cls[:-len(' below minimum')]}<{doc['threshold']}")
                else:
                    parts.append(f"{cls} ({', '.join(f'{k}={v}' for k, v in doc.items())})" if doc else cls)
            r["drop_reason"] = ";".join(parts) or None
        keep = [c for c in t.column_names if c not in ("drop_class", "drop_detail", *SCORE_COLUMNS)]
        pq.write_table(t.select(keep).from_pylist([{c: r[c] for c in keep} for r in rows],
                                                  schema=t.select(keep).schema), p)


def build_outputs(root: Path) -> dict[str, Path]:
    return {
        "ieiw_removal/v1": write_output(root / "ieiw_removal" / "v1", removal_rows(), name="ieiw_removal", per_shard=7),
        "ieiw_replacement/v1": write_output(root / "ieiw_replacement" / "v1", replacement_rows(),
                                            name="ieiw_replacement"),
        "keypoints_coco/v1": write_output(root / "keypoints_coco" / "v1", keypoint_rows(), name="keypoints_coco"),
        "alignment_bench/v1": write_output(root / "alignment_bench" / "v1", alignment_rows(), name="alignment_bench"),
    }


def corrupt_member(output_dir: Path, key: str, kind: str = "tgt") -> None:
    """Overwrite the middle of one image member in place (the tar stays the same size)."""
    import pyarrow.parquet as pq

    for split in ("train", "rejected"):
        for p in sorted((output_dir / split).glob("*.parquet")):
            t = pq.read_table(p).to_pylist()
            for r in t:
                if r["key"] == key:
                    tar = output_dir / split / r["tar"]
                    off, size = r[f"{kind}_offset"], r[f"{kind}_size"]
                    with open(tar, "r+b") as fh:
                        fh.seek(off + 2)
                        fh.write(b"\x00" * (size - 4))
                    return
    raise KeyError(key)
