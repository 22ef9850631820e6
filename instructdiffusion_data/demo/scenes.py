"""A procedural scene model shared by the demo generators.

A scene is a textured background split into stuff regions (sky, grass, road, wall...), some things
(simple filled shapes of COCO categories, each with a colour attribute) and some people (stick
figures carrying the 17 COCO joints). Everything drawn is known exactly: per-instance visible masks,
the stuff label of every pixel, joint positions. Generators turn that into each dataset's files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..readers._coco import cocostuff_labels

COLOURS = {
    "red": (200, 30, 30), "green": (40, 160, 40), "blue": (40, 60, 200), "yellow": (230, 210, 40),
    "white": (235, 235, 235), "black": (25, 25, 25), "brown": (120, 70, 30), "orange": (240, 140, 20),
    "grey": (128, 128, 128), "pink": (240, 150, 190),
}
THINGS = ["dog", "cat", "car", "cup", "bottle", "chair", "sports ball", "umbrella", "bench", "potted plant"]
STUFF_TOP = ["sky-other", "wall-brick", "tree", "building-other"]
STUFF_BOTTOM = ["grass", "road", "sand", "floor-wood", "snow"]
STUFF_TINT = {"sky-other": (130, 180, 235), "wall-brick": (150, 70, 50), "tree": (40, 100, 40),
              "building-other": (160, 160, 170), "grass": (70, 150, 60), "road": (90, 90, 95),
              "sand": (210, 190, 140), "floor-wood": (150, 100, 60), "snow": (240, 240, 245)}

# 17 COCO joints as offsets (in units of the person's height) from the hip centre, standing pose.
JOINT_LAYOUT = np.array([
    [0.00, -0.86], [-0.03, -0.89], [0.03, -0.89], [-0.06, -0.87], [0.06, -0.87],  # nose, eyes, ears
    [-0.12, -0.70], [0.12, -0.70], [-0.17, -0.48], [0.17, -0.48], [-0.19, -0.28], [0.19, -0.28],  # arms
    [-0.08, -0.02], [0.08, -0.02], [-0.09, 0.26], [0.09, 0.26], [-0.10, 0.52], [0.10, 0.52],  # legs
])
LIMBS = [(5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (11, 12), (5, 11), (6, 12), (11, 13), (13, 15), (12, 14), (14, 16)]


@dataclass
class Instance:
    kind: str  # "thing" or "person"
    category: str
    category_id: int
    colour: str
    mask: np.ndarray = field(repr=False)
    joints: np.ndarray | None = None  # [17, 3] x, y, v (COCO convention)

    @property
    def bbox(self) -> list[float]:
        ys, xs = np.nonzero(self.mask)
        if not len(xs):
            return [0.0, 0.0, 0.0, 0.0]
        return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]

    @property
    def centre_x(self) -> float:
        b = self.bbox
        return b[0] + b[2] / 2


@dataclass
class Scene:
    image_id: int
    rgb: np.ndarray
    stuff: np.ndarray  # [H, W] COCO-Stuff category id per pixel (0 = unlabeled)
    instances: list[Instance]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


def name_to_id() -> dict[str, int]:
    return {n: i for i, n in cocostuff_labels().items()}


def _texture(rng: np.random.Generator, h: int, w: int, tint, amp: float) -> np.ndarray:
    noise = rng.normal(0, 1, (h // 8 + 1, w // 8 + 1, 1)).astype(np.float32)
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    fine = rng.normal(0, 0.35, (h, w, 1)).astype(np.float32)
    return np.clip(np.array(tint, np.float32) + amp * (noise + fine), 0, 255)


def _thing_polygon(cat: str, cx: float, cy: float, s: float, rng: np.random.Generator) -> np.ndarray:
    if cat in ("car", "bench", "chair"):
        w, h = s * 1.6, s * (0.7 if cat == "car" else 1.0)
        pts = [[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]]
        if cat == "car":
            pts = [[-w / 2, 0], [-w / 4, -h / 2], [w / 4, -h / 2], [w / 2, 0], [w / 2, h / 2], [-w / 2, h / 2]]
    elif cat in ("cup", "bottle", "potted plant"):
        w, h = s * (0.6 if cat == "cup" else 0.4), s * (0.8 if cat == "cup" else 1.5)
        pts = [[-w / 2, -h / 2], [w / 2, -h / 2], [w * 0.35, h / 2], [-w * 0.35, h / 2]]
    elif cat == "umbrella":
        t = np.linspace(np.pi, 2 * np.pi, 16)
        pts = np.stack([np.cos(t) * s, np.sin(t) * s * 0.6], 1).tolist() + [[s, 0.1 * s], [-s, 0.1 * s]]
    else:  # dog, cat, sports ball: ellipses of different aspect
        ax = {"dog": (1.0, 0.55), "cat": (0.8, 0.5), "sports ball": (0.5, 0.5)}.get(cat, (0.8, 0.6))
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        jitter = 1 + 0.05 * rng.standard_normal(len(t))
        pts = np.stack([np.cos(t) * s * ax[0] * jitter, np.sin(t) * s * ax[1] * jitter], 1).tolist()
    return np.array(pts, np.float32) + np.array([cx, cy], np.float32)


def make_scene(image_id: int, rng: np.random.Generator, size: tuple[int, int] | None = None,
               n_people: tuple[int, int] = (1, 3), n_things: tuple[int, int] = (2, 4)) -> Scene:
    ids = name_to_id()
    h, w = size or ([(480, 640), (360, 480), (640, 480), (400, 600)][int(rng.integers(4))])
    top, bottom = STUFF_TOP[int(rng.integers(len(STUFF_TOP)))], STUFF_BOTTOM[int(rng.integers(len(STUFF_BOTTOM)))]
    horizon = int(h * rng.uniform(0.35, 0.55))
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:horizon] = _texture(rng, horizon, w, STUFF_TINT[top], 14)
    rgb[horizon:] = _texture(rng, h - horizon, w, STUFF_TINT[bottom], 18)
    stuff = np.zeros((h, w), np.int32)
    stuff[:horizon], stuff[horizon:] = ids[top], ids[bottom]
    owner = np.full((h, w), -1, np.int32)
    instances: list[Instance] = []
    canvas = rgb

    for _ in range(int(rng.integers(n_things[0], n_things[1] + 1))):
        cat = THINGS[int(rng.integers(len(THINGS)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        s = rng.uniform(0.08, 0.16) * min(h, w)
        cx, cy = rng.uniform(0.12 * w, 0.88 * w), rng.uniform(max(horizon, 0.3 * h), 0.85 * h)
        poly = _thing_polygon(cat, cx, cy, s, rng)
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1)
        shade = _texture(rng, h, w, COLOURS[colour], 10)
        canvas[m > 0] = shade[m > 0]
        owner[m > 0] = len(instances)
        instances.append(Instance("thing", cat, ids[cat], colour, m > 0))

    n_p = int(rng.integers(n_people[0], n_people[1] + 1))
    slots = np.sort(rng.permutation(np.linspace(0.15, 0.85, 4))[:n_p]) if n_p else []
    for sx in slots:
        ph = rng.uniform(0.4, 0.6) * h
        hip_y = rng.uniform(0.97 * ph, max(0.97 * ph, h - 0.56 * ph))  # head and feet inside the frame
        hip = np.array([sx * w + rng.uniform(-0.03, 0.03) * w, hip_y])
        xy = hip + JOINT_LAYOUT * ph * np.array([rng.uniform(0.9, 1.1), 1.0])
        xy += rng.normal(0, 0.012 * ph, xy.shape)  # pose variation
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        m = np.zeros((h, w), np.uint8)
        thick = max(3, int(0.045 * ph))
        for a, b in LIMBS:
            cv2.line(m, tuple(np.round(xy[a]).astype(int)), tuple(np.round(xy[b]).astype(int)), 1, thick)
        cv2.circle(m, tuple(np.round(xy[0] + [0, -0.02 * ph]).astype(int)), int(0.07 * ph), 1, -1)
        body = _texture(rng, h, w, COLOURS[colour], 8)
        canvas[m > 0] = body[m > 0]
        skin = np.array([224, 172, 140], np.float32)
        head = np.zeros((h, w), np.uint8)
        cv2.circle(head, tuple(np.round(xy[0] + [0, -0.02 * ph]).astype(int)), int(0.06 * ph), 1, -1)
        canvas[head > 0] = skin
        owner[m > 0] = len(instances)
        v = np.full(17, 2)
        v[rng.random(17) < 0.1] = 1  # some joints labelled but occluded
        v[rng.random(17) < 0.08] = 0  # some not labelled
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        v[~inside] = 0
        joints = np.concatenate([xy, v[:, None]], 1)
        joints[v == 0, :2] = 0  # COCO writes 0,0,0 for unlabelled joints
        instances.append(Instance("person", "person", 1, colour, m > 0, joints))

    for i, inst in enumerate(instances):
        inst.mask = owner == i  # visible part only
    rgb8 = np.clip(canvas, 0, 255).astype(np.uint8)
    return Scene(image_id, rgb8, stuff, [i for i in instances if i.mask.any()])


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (flat lists) tracing a mask's outer contours."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3:
            polys.append([float(v) + 0.5 for v in c.reshape(-1)])
    return polys


_COUNTS = ["no", "one", "two", "three", "four", "five", "six"]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def scene_captions(scene: Scene) -> list[str]:
    """Three captions of a scene in the style of COCO's (sentence case, most with a full stop), from what
    was drawn: the people (with their colours), up to three things and the two stuff regions."""
    from ..readers._coco import clean_name
    from ..text import with_article

    labels = cocostuff_labels()
    top = clean_name(labels.get(int(scene.stuff[0, 0]), "sky-other"))
    bottom = clean_name(labels.get(int(scene.stuff[-1, 0]), "grass"))
    people = [i for i in scene.instances if i.kind == "person"]
    things = [i for i in scene.instances if i.kind == "thing"][:3]
    n = len(people)
    who = None if not n else "a person" if n == 1 else f"{_COUNTS[min(n, 6)]} people"
    dressed = None if not n else f"a person in {people[0].colour}" if n == 1 else \
        f"{_COUNTS[min(n, 6)]} people in {_join(sorted({p.colour for p in people}))}"
    coloured = [with_article(f"{t.colour} {t.category}") for t in things]
    plain = [with_article(t.category) for t in things]
    caps = []
    if who and things:
        caps.append(f"{who} with {_join(coloured)} on the {bottom}.")
        caps.append(f"{dressed} standing near {_join(plain)}")
        caps.append(f"{_join(coloured)} next to {who} under the {top}.")
    elif who:
        caps += [f"{who} standing on the {bottom}.", f"{dressed} under the {top}.", f"{who} outside on the {bottom}"]
    elif things:
        caps += [f"{_join(coloured)} on the {bottom}.", f"{_join(plain)} under the {top}.",
                 f"a view of {_join(coloured)}"]
    else:
        caps += [f"an empty {bottom} under the {top}.", f"a view of the {bottom}.", f"the {top} above the {bottom}"]
    return [c[:1].upper() + c[1:] for c in caps]
