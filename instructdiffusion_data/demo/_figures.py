"""Procedural pictures for the demo datasets of part 2: backgrounds, stick figures with named joints,
and simple object scenes. Shared by the demo generators; not a generator itself (leading underscore).
"""

from __future__ import annotations

import cv2
import numpy as np

# joint positions of a standing figure, in units of the figure height, relative to the top of the head
_BODY = {
    "head_top": (0.0, 0.0), "nose": (0.0, 0.07), "left_eye": (0.025, 0.055), "right_eye": (-0.025, 0.055),
    "left_ear": (0.05, 0.065), "right_ear": (-0.05, 0.065), "upper_neck": (0.0, 0.12), "neck": (0.0, 0.15),
    "thorax": (0.0, 0.18), "left_shoulder": (0.11, 0.19), "right_shoulder": (-0.11, 0.19),
    "left_elbow": (0.16, 0.33), "right_elbow": (-0.16, 0.33), "left_wrist": (0.18, 0.46),
    "right_wrist": (-0.18, 0.46), "pelvis": (0.0, 0.5), "left_hip": (0.07, 0.5), "right_hip": (-0.07, 0.5),
    "left_knee": (0.08, 0.73), "right_knee": (-0.08, 0.73), "left_ankle": (0.09, 0.97), "right_ankle": (-0.09, 0.97),
}
_BONES = [("head_top", "neck"), ("neck", "left_shoulder"), ("neck", "right_shoulder"), ("left_shoulder", "left_elbow"),
          ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
          ("neck", "pelvis"), ("pelvis", "left_hip"), ("pelvis", "right_hip"), ("left_hip", "left_knee"),
          ("left_knee", "left_ankle"), ("right_hip", "right_knee"), ("right_knee", "right_ankle")]


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth two-colour gradient with a few soft rectangles and some texture."""
    c0, c1 = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = (c0 * (1 - t) + c1 * t).repeat(w, axis=1).astype(np.float32)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = int(rng.integers(x0 + 4, w)), int(rng.integers(y0 + 4, h))
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(float(v) for v in rng.integers(0, 255, 3)), -1)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def textured(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A detailed picture (edges at many scales) so that blur and noise are visible."""
    img = background(rng, h, w)
    for _ in range(int(rng.integers(8, 16))):
        color = tuple(int(v) for v in rng.integers(0, 255, 3))
        kind = int(rng.integers(3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            cv2.circle(img, (cx, cy), int(rng.integers(4, max(6, h // 5))), color, int(rng.choice([-1, 2, 3])))
        elif kind == 1:
            cv2.line(img, (cx, cy), (int(rng.integers(0, w)), int(rng.integers(0, h))), color, int(rng.integers(1, 4)))
        else:
            pts = rng.integers(0, [w, h], (int(rng.integers(3, 6)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], color)
    # fine stripes: high frequencies that blur removes
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    for i in range(0, w // 4, 4):
        cv2.line(img, (x0 + i, y0), (x0 + i, y0 + h // 4), (255, 255, 255), 1)
    return img


def figure_joints(rng: np.random.Generator, cx: float, top: float, height: float) -> dict[str, tuple[float, float]]:
    """Named joint positions of one stick figure (slightly jittered pose)."""
    out = {}
    for name, (dx, dy) in _BODY.items():
        jx, jy = rng.normal(0, 0.012, 2) if name not in ("head_top", "neck", "pelvis") else (0.0, 0.0)
        out[name] = (float(cx + (dx + jx) * height), float(top + (dy + jy) * height))
    return out


def draw_figure(img: np.ndarray, joints: dict[str, tuple[float, float]], color: tuple[int, int, int], height: float) -> None:
    th = max(2, int(height * 0.03))
    for a, b in _BONES:
        pa, pb = joints[a], joints[b]
        cv2.line(img, (int(pa[0]), int(pa[1])), (int(pb[0]), int(pb[1])), color, th, cv2.LINE_AA)
    hx, hy = joints["nose"]
    cv2.circle(img, (int(hx), int(hy)), max(3, int(height * 0.07)), color, -1, cv2.LINE_AA)


def people_scene(rng: np.random.Generator, h: int, w: int, n_people: int) -> tuple[np.ndarray, list[dict]]:
    """An image with ``n_people`` stick figures side by side; returns the image and per person
    ``{"joints": {name: (x, y)}, "box": [x1, y1, x2, y2]}``."""
    img = background(rng, h, w)
    people = []
    slot = w / n_people
    for i in range(n_people):
        height = float(rng.uniform(0.55, 0.85) * h)
        cx = float((i + 0.5) * slot + rng.uniform(-0.1, 0.1) * slot)
        top = float(rng.uniform(0.03, 0.97 * h - height))
        joints = figure_joints(rng, cx, top, height)
        draw_figure(img, joints, tuple(int(v) for v in rng.integers(0, 255, 3)), height)
        xs = [p[0] for p in joints.values()]
        ys = [p[1] for p in joints.values()]
        pad = 0.08 * height
        box = [max(0.0, min(xs) - pad), max(0.0, min(ys) - pad), min(w - 1.0, max(xs) + pad), min(h - 1.0, max(ys) + pad)]
        people.append({"joints": joints, "box": box})
    return img, people


OBJECTS = ["red ball", "blue box", "green tree", "yellow star", "white cloud", "black cat", "orange car", "purple hat"]
_OBJ_COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 40), "yellow": (240, 220, 30),
               "white": (245, 245, 245), "black": (15, 15, 15), "orange": (250, 140, 20), "purple": (140, 40, 170)}


def draw_object(img: np.ndarray, name: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """Draw a named object in ``box`` (x0, y0, x1, y1); returns its mask (uint8 0/255)."""
    color = _OBJ_COLORS[name.split()[0]]
    mask = np.zeros(img.shape[:2], np.uint8)
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) // 2, (y0 + y1) // 2, max(3, min(x1 - x0, y1 - y0) // 2)
    shape = name.split()[1]
    if shape in ("ball", "cloud", "cat"):
        cv2.circle(mask, (cx, cy), r, 255, -1)
    elif shape in ("box", "car", "hat"):
        cv2.rectangle(mask, (x0, y0 + (y1 - y0) // 4), (x1, y1), 255, -1)
    elif shape == "tree":
        cv2.fillPoly(mask, [np.array([[cx, y0], [x0, y1], [x1, y1]], np.int32)], 255)
    else:
        pts = [(cx + r * np.cos(a) * (1 if k % 2 == 0 else 0.45), cy + r * np.sin(a) * (1 if k % 2 == 0 else 0.45))
               for k, a in enumerate(np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False))]
        cv2.fillPoly(mask, [np.array(pts, np.int32)], 255)
    img[mask > 0] = color
    return mask


def write_jpg(path, rgb: np.ndarray, quality: int = 92) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])


def write_png(path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
    cv2.imwrite(str(path), out, [cv2.IMWRITE_PNG_COMPRESSION, 1])


def object_scene(rng: np.random.Generator, h: int, w: int, k: int) -> tuple[np.ndarray, list[dict]]:
    """A background with ``k`` named objects side by side; returns the image and
    ``[{"name", "box", "mask"}]``."""
    img = background(rng, h, w)
    objs = []
    names = list(rng.permutation(OBJECTS))[:k]
    slot = w // k
    for i, name in enumerate(names):
        s = int(rng.integers(min(h, slot) // 3, max(min(h, slot) // 3 + 1, int(min(h, slot) * 0.7))))
        x0 = i * slot + int(rng.integers(0, max(1, slot - s)))
        y0 = int(rng.integers(0, max(1, h - s)))
        box = (x0, y0, x0 + s, y0 + s)
        objs.append({"name": str(name), "box": box, "mask": draw_object(img, str(name), box)})
    return img, objs


def edit_pair(rng: np.random.Generator, h: int, w: int, kind: str | None = None) -> dict:
    """A synthetic editing example: ``src``, ``tgt``, ``instruction``, ``mask`` (0/255), captions
    and the edit ``kind`` (replace / remove / add / recolor)."""
    kind = kind or str(rng.choice(["replace", "remove", "add", "recolor"]))
    base = background(rng, h, w)
    k = int(rng.integers(1, 3))
    src = base.copy()
    names = list(rng.permutation(OBJECTS))
    slot = w // (k + 1)
    placed = []
    for i in range(k):
        s = int(min(h, slot) * rng.uniform(0.45, 0.8))
        x0 = i * slot + int(rng.integers(0, max(1, slot - s)))
        y0 = int(rng.integers(0, max(1, h - s)))
        placed.append((str(names[i]), (x0, y0, x0 + s, y0 + s)))
        draw_object(src, str(names[i]), (x0, y0, x0 + s, y0 + s))
    free_box = (k * slot + 4, h // 4, min(w - 4, k * slot + slot - 4), h // 4 + min(slot - 8, h // 2))
    tgt = base.copy()
    mask = np.zeros((h, w), np.uint8)
    target_names = [n for n, _ in placed]
    if kind == "remove":
        gone = placed[-1]
        for n, b in placed[:-1]:
            draw_object(tgt, n, b)
        mask = draw_object(np.zeros_like(src), gone[0], gone[1])
        text = f"remove the {gone[0]}"
        target_names = target_names[:-1]
    elif kind == "add":
        for n, b in placed:
            draw_object(tgt, n, b)
        new = str(names[k])
        mask = draw_object(tgt, new, free_box)
        text = f"add a {new}"
        target_names.append(new)
    else:
        old = placed[0]
        for n, b in placed[1:]:
            draw_object(tgt, n, b)
        if kind == "recolor":
            colors = [c for c in _OBJ_COLORS if c != old[0].split()[0]]
            new = f"{colors[int(rng.integers(len(colors)))]} {old[0].split()[1]}"
            text = f"make the {old[0].split()[1]} {new.split()[0]}"
        else:
            new = str(names[k])
            text = f"turn the {old[0]} into a {new}"
        mask = draw_object(tgt, new, old[1]) | draw_object(np.zeros_like(src), old[0], old[1])
        target_names[0] = new
    return {"src": src, "tgt": tgt, "mask": mask, "instruction": text, "kind": kind,
            "input_caption": "a picture of " + " and ".join(f"a {n}" for n, _ in placed),
            "output_caption": "a picture of " + (" and ".join(f"a {n}" for n in target_names) or "nothing")}
