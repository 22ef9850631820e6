"""Demo COCO-family datasets in their released layouts, from one set of procedural scenes:

```
coco/train2017/<id:012d>.jpg                      coco/annotations/person_keypoints_train2017.json
coco/train2014/COCO_train2014_<id:012d>.jpg       coco/annotations/instances_train2017.json
coco/annotations/captions_train2017.json          coco/annotations/captions_train2014.json (3 captions per image)
cocostuff/annotations/stuff_train2017.json        (RLE, ids 92-182 + 183 "other")
cocostuff/stuffthingmaps_trainval2017/train2017/<id:012d>.png   (id - 1, 255 unlabeled)
refcoco/refcoco/refs(unc).p  refcoco/refcoco/instances.json     (also refcoco+ (unc), refcocog (umd))
grefcoco/grefs(unc).json     grefcoco/instances.json
```
Like the real files, the keypoint json holds people with no labelled joint (``num_keypoints`` 0).
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .. import imageio
from ..readers.coco_keypoints import COCO_JOINTS
from .scenes import Scene, make_scene, mask_polygons, name_to_id, scene_captions

SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10],
            [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
ABSENT = [("purple", "giraffe"), ("pink", "elephant"), ("green", "zebra"), ("orange", "airplane")]
PLURAL = {"person": "people", "bench": "benches", "sports ball": "balls", "potted plant": "plants"}


def _plural(cat: str) -> str:
    return PLURAL.get(cat, cat + "s")


def _write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def _image_entry(s: Scene, file_name: str) -> dict:
    return {"id": s.image_id, "file_name": file_name, "width": s.width, "height": s.height,
            "license": 1, "coco_url": "", "date_captured": "2013-11-14 16:28:13"}


def _expressions(scene: Scene, idx: int, style: str) -> list[str]:
    """Referring expressions for instance ``idx`` in the style of RefCOCO (location words),
    RefCOCO+ (appearance only) or RefCOCOg (longer, descriptive)."""
    inst = scene.instances[idx]
    name = "person" if inst.kind == "person" else inst.category
    same = [i for i, o in enumerate(scene.instances) if o.category == inst.category]
    order = sorted(same, key=lambda i: scene.instances[i].centre_x)
    where = ""
    if len(same) > 1:
        where = "left" if order[0] == idx else "right" if order[-1] == idx else "middle"
    colour = inst.colour
    wearing = f"in {colour}" if inst.kind == "person" else colour
    if style == "refcoco":
        return [f"{where} {name}".strip(), f"{name} on the {where}" if where else f"{name}",
                f"{name} {wearing}" if inst.kind == "person" else f"{colour} {name}"]
    if style == "refcoco+":
        return [f"{name} {wearing}" if inst.kind == "person" else f"{colour} {name}",
                f"the {colour} {name}"]
    ground = "on the ground"
    return [f"a {colour} {name} standing {ground}" + (f" on the {where}" if where else ""),
            f"the {name} that is {colour}" + (f", the one on the {where}" if where else "")]


def _sentences(texts: list[str], next_id: list[int]) -> tuple[list[dict], list[int]]:
    sents = []
    for t in texts:
        sid = next_id[0]
        next_id[0] += 1
        sents.append({"tokens": t.split(), "raw": t, "sent_id": sid, "sent": t.lower()})
    return sents, [s["sent_id"] for s in sents]


def generate(out: Path, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = name_to_id()
    coco = out / "coco"
    (coco / "train2017").mkdir(parents=True, exist_ok=True)
    (coco / "train2014").mkdir(parents=True, exist_ok=True)
    pixmaps = out / "cocostuff" / "stuffthingmaps_trainval2017" / "train2017"
    pixmaps.mkdir(parents=True, exist_ok=True)

    kp_images, kp_anns, inst_anns, stuff_anns, images14, caption_anns = [], [], [], [], [], []
    refs = {"refcoco": [], "refcoco+": [], "refcocog": []}
    grefs = []
    ann_id, ref_id, sent_id = 1, 0, [0]
    cat_counter: Counter = Counter()
    for k in range(n):
        image_id = 100 + k * 7  # sparse ids, as in COCO
        scene = make_scene(image_id, rng)
        fname = f"{image_id:012d}.jpg"
        data = imageio.encode_jpeg(scene.rgb, 92)
        (coco / "train2017" / fname).write_bytes(data)
        f14 = f"COCO_train2014_{image_id:012d}.jpg"
        target14 = coco / "train2014" / f14
        if target14.exists():
            target14.unlink()
        os.link(coco / "train2017" / fname, target14)
        kp_images.append(_image_entry(scene, fname))
        images14.append(_image_entry(scene, f14))
        for text in scene_captions(scene):  # COCO: ~5 captions per image, annotation ids of their own
            caption_anns.append({"image_id": image_id, "id": 700_000 + len(caption_anns), "caption": text})

        ann_ids = []
        for inst in scene.instances:
            polys = mask_polygons(inst.mask)
            if not polys:
                ann_ids.append(None)
                continue
            ann = {"id": ann_id, "image_id": image_id, "category_id": inst.category_id, "iscrowd": 0,
                   "area": float(inst.mask.sum()), "bbox": inst.bbox, "segmentation": polys}
            inst_anns.append(ann)
            cat_counter[inst.category_id] += 1
            if inst.kind == "person":
                j = inst.joints
                kp = []
                for x, y, v in j:
                    kp += [round(float(x), 2), round(float(y), 2), int(v)]
                kp_anns.append(dict(ann, keypoints=kp, num_keypoints=int((j[:, 2] > 0).sum())))
            ann_ids.append(ann_id)
            ann_id += 1
        # one person of every fourth image carries no labelled joint, as many real COCO people do
        if k % 4 == 3 and any(a["image_id"] == image_id for a in kp_anns):
            last = next(a for a in reversed(kp_anns) if a["image_id"] == image_id)
            last["keypoints"] = [0] * 51
            last["num_keypoints"] = 0

        # COCO-Stuff: stuff classes as RLE, things merged into 183 "other"; pixel map with every class
        full = scene.stuff.copy()
        things = np.zeros(full.shape, bool)
        for inst in scene.instances:
            full[inst.mask] = inst.category_id
            things |= inst.mask
        for cid in sorted(set(np.unique(scene.stuff)) - {0}):
            m = (scene.stuff == cid) & ~things
            if m.any():
                stuff_anns.append({"id": 10_000_000 + len(stuff_anns), "image_id": image_id, "category_id": int(cid),
                                   "iscrowd": 0, "area": float(m.sum()), "bbox": [0, 0, 0, 0], "segmentation": _rle(m)})
        if things.any():
            stuff_anns.append({"id": 10_000_000 + len(stuff_anns), "image_id": image_id, "category_id": 183,
                               "iscrowd": 0, "area": float(things.sum()), "bbox": [0, 0, 0, 0], "segmentation": _rle(things)})
        pm = (full - 1).astype(np.uint8)
        pm[full == 0] = 255
        pm[:2, :] = 255  # a thin unlabeled strip, like the annotation gaps of the real maps
        (pixmaps / f"{image_id:012d}.png").write_bytes(imageio.encode_png(pm))

        # referring expressions
        split = "train" if k % 8 else "val"
        for idx, inst in enumerate(scene.instances):
            if ann_ids[idx] is None:
                continue
            for style, bucket in (("refcoco", "refcoco"), ("refcoco+", "refcoco+"), ("refcocog", "refcocog")):
                sents, sids = _sentences(_expressions(scene, idx, style), sent_id)
                bucket_split = split if style != "refcocog" else ("train" if split == "train" else "val")
                refs[bucket].append({"ref_id": ref_id, "ann_id": ann_ids[idx], "image_id": image_id,
                                     "split": bucket_split, "sentences": sents, "sent_ids": sids,
                                     "file_name": f"COCO_train2014_{image_id:012d}_{ann_ids[idx]}.jpg",
                                     "category_id": inst.category_id})
                ref_id += 1
        by_cat: dict = {}
        for idx, inst in enumerate(scene.instances):
            if ann_ids[idx] is not None:
                by_cat.setdefault(inst.category, []).append(ann_ids[idx])
        for cat, members in sorted(by_cat.items()):
            name = "person" if cat == "person" else cat
            if len(members) >= 2:
                texts = [f"all {_plural(name)}", f"both {_plural(name)}" if len(members) == 2 else f"every {name}"]
            else:
                texts = [f"the only {name}", f"{name}"]
            sents, sids = _sentences(texts, sent_id)
            grefs.append({"ref_id": ref_id, "image_id": image_id, "ann_id": members, "sent_ids": sids,
                          "sentences": sents, "split": split, "file_name": f"COCO_train2014_{image_id:012d}.jpg",
                          "category_id": [ids.get(cat, 1)] * len(members), "no_target": False})
            ref_id += 1
        colour, absent = ABSENT[k % len(ABSENT)]
        sents, sids = _sentences([f"the {colour} {absent}", f"{absent} in the corner"], sent_id)
        grefs.append({"ref_id": ref_id, "image_id": image_id, "ann_id": [-1], "sent_ids": sids, "sentences": sents,
                      "split": split, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "category_id": [-1],
                      "no_target": True})
        ref_id += 1

    labels = {i: nm for nm, i in ids.items()}
    person_cat = {"id": 1, "name": "person", "supercategory": "person", "keypoints": COCO_JOINTS, "skeleton": SKELETON}
    thing_cats = [{"id": cid, "name": labels[cid], "supercategory": "thing"} for cid in sorted(cat_counter)]
    _write_json(coco / "annotations" / "person_keypoints_train2017.json",
                {"info": {"description": "instructdiffusion-data demo"}, "licenses": [], "images": kp_images,
                 "annotations": kp_anns, "categories": [person_cat]})
    _write_json(coco / "annotations" / "instances_train2017.json",
                {"info": {}, "licenses": [], "images": kp_images, "annotations": inst_anns, "categories": thing_cats})
    for split, images in (("train2017", kp_images), ("train2014", images14)):
        _write_json(coco / "annotations" / f"captions_{split}.json",
                    {"info": {"description": "instructdiffusion-data demo"}, "licenses": [], "images": images,
                     "annotations": caption_anns})
    stuff_cats = [{"id": i, "name": labels[i], "supercategory": "stuff"} for i in range(92, 184)]
    _write_json(out / "cocostuff" / "annotations" / "stuff_train2017.json",
                {"info": {}, "licenses": [], "images": kp_images, "annotations": stuff_anns, "categories": stuff_cats})
    inst14 = {"info": {}, "licenses": [], "images": images14, "annotations": inst_anns,
              "categories": [{"id": cid, "name": labels[cid], "supercategory": "thing"} for cid in sorted(cat_counter)]}
    for name, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        d = out / "refcoco" / name
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"refs({split_by}).p", "wb") as fh:
            pickle.dump(refs[name], fh, protocol=2)
        _write_json(d / "instances.json", inst14)
    _write_json(out / "grefcoco" / "grefs(unc).json", grefs)
    _write_json(out / "grefcoco" / "instances.json", inst14)
    return {"images": n, "people": len(kp_anns), "instances": len(inst_anns),
            "refs": {k: len(v) for k, v in refs.items()}, "grefs": len(grefs), "stuff_annotations": len(stuff_anns),
            "captions": len(caption_anns)}
