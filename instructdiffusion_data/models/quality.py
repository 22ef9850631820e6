"""Quality-filter rules, output reading and reports, shared by the ``quality_filter`` stage and the
``idd filter`` / ``idd giqa`` commands (a stage never imports another stage; commands never recompute).

A *rule* is a threshold field name (the same name in the stage config, in ``meta["filter"]
["thresholds"]`` and in ``idd filter --set``) bound to one score of ``meta["scores"]`` and a
comparison. A row fails a rule when its score is present and on the wrong side; the failure is
named ``"<score><op><threshold>"``, e.g. ``aesthetic_tgt<5.0``, in ``drop_reason``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    field: str  # threshold name (config / --set)
    score: str  # key in meta["scores"]
    op: str  # "<": fails below the threshold; ">": fails above it
    doc: str


RULES: dict[str, Rule] = {r.field: r for r in (
    Rule("aesthetic_tgt_min", "aesthetic_tgt", "<", "target aesthetic score below t1"),
    Rule("giqa_tgt_min", "giqa_tgt", "<", "target GIQA score below t2"),
    Rule("aesthetic_diff_max", "aesthetic_diff", ">", "|source - target| aesthetic score above t3"),
    Rule("giqa_diff_max", "giqa_diff", ">", "|source - target| GIQA score above t3 (GIQA)"),
    Rule("edit_change_min", "edit_change", "<", "mean |target - source| inside the mask (0-255) below this: "
                                                "the edit changed nothing"),
    Rule("background_change_max", "background_change", ">", "mean |target - source| outside the dilated mask "
                                                            "(0-255) above this: the background moved"),
    Rule("replace_gain_min", "replace_gain", "<", "sim(target region, reference) - sim(source region, "
                                                  "reference) below this: the region did not become the reference"),
)}

SCORE_NAMES = ("aesthetic_src", "aesthetic_tgt", "aesthetic_diff", "giqa_src", "giqa_tgt", "giqa_diff",
               "edit_change", "background_change", "replace_gain")

_REF_PCT = re.compile(r"^ref:p(\d+(?:\.\d+)?)$")


def fmt_threshold(value: float) -> str:
    return repr(float(value))


def reason(rule: Rule, threshold: float) -> str:
    return f"{rule.score}{rule.op}{fmt_threshold(threshold)}"


def resolve_threshold(field: str, value: Any, giqa_percentiles: dict | None) -> float | None:
    """A configured threshold as a number: floats as they are, ``None`` disables the rule, and for
    GIQA rules ``"ref:pN"`` is the N-th percentile of the reference set's leave-one-out GIQA scores."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UserError(f"{field}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("none", "null", "off", ""):
            return None
        m = _REF_PCT.match(text)
        if m:
            if not field.startswith("giqa"):
                raise UserError(f"{field}: 'ref:pN' thresholds apply to GIQA rules only")
            if not giqa_percentiles:
                raise UserError(f"{field}={text}: no GIQA reference percentiles known")
            key = f"p{m.group(1).rstrip('0').rstrip('.') if '.' in m.group(1) else m.group(1)}"
            if key not in giqa_percentiles:
                raise UserError(f"{field}={text}: reference percentiles are {sorted(giqa_percentiles)}")
            return round(float(giqa_percentiles[key]), 4)
        try:
            return float(text)
        except ValueError:
            pass
    raise UserError(f"{field}: expected a number, 'none' or 'ref:pN', got {value!r}")


def evaluate(scores: dict[str, float], thresholds: dict[str, float | None]) -> list[str]:
    """The rules a row fails, as drop-reason strings, in :data:`RULES` order."""
    failed = []
    for field, rule in RULES.items():
        thr = thresholds.get(field)
        s = scores.get(rule.score)
        if thr is None or s is None or (isinstance(s, float) and math.isnan(s)):
            continue
        if (rule.op == "<" and s < thr) or (rule.op == ">" and s > thr):
            failed.append(reason(rule, thr))
    return failed


def rule_of_reason(text: str) -> str | None:
    for field, rule in RULES.items():
        if text.startswith(rule.score + rule.op):
            return field
    return None


# -- reading an output ------------------------------------------------------------------------

def output_root(path: str | Path) -> Path | str:
    """The output folder (holding manifest.json or a generation pointer): the path itself, or its only
    version below. A local Path, or the URI string of an output on an object store."""
    from ..generations import is_output
    from ..storage import is_uri

    if is_uri(str(path)):
        if is_output(str(path)):
            return str(path)
        raise UserError(f"{path}: not a shard output (no manifest.json)")
    p = Path(path)
    if is_output(p):
        return p
    if p.is_dir():
        found = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".") and is_output(d))
        if len(found) == 1:
            return found[0]
    raise UserError(f"{p}: not a shard output (no manifest.json)")


def shard_sidecars(root: Path | str, resolve: bool = True) -> dict[str, dict[str, Path]]:
    """``{shard name: {split: parquet path}}`` over train/ and rejected/ of the output's current
    generation (``resolve=False``: of exactly the folder ``root``). With a manifest, the shards it lists;
    without one, every parquet in the folder. Paths are local Paths, or Locations on an object store."""
    from ..generations import current, generation
    from ..storage import Location

    gen = current(root, load_manifest=False) if resolve else generation(root, 0, load_manifest=False)
    manifest = None
    if gen.manifest_loc.is_file():
        try:
            manifest = json.loads(gen.manifest_loc.read_text())
        except ValueError:
            manifest = None
    out: dict[str, dict[str, Any]] = defaultdict(dict)

    def place(rel: str) -> Any:
        loc = gen.file(rel)
        return Path(loc.path) if loc.local else loc

    for split in ("train", "rejected"):
        listed = ((manifest or {}).get("splits") or {}).get(split, {}).get("shards") if manifest else None
        if isinstance(listed, list):
            names = [s["parquet"] for s in listed if isinstance(s, dict) and isinstance(s.get("parquet"), str)]
        else:
            d: Location = gen.loc / split
            names = [f"{split}/{n}" for n in d.names() if n.endswith(".parquet")]
        for rel in sorted(names):
            out[rel.rsplit("/", 1)[-1].split(".")[0]][split] = place(rel)
    return dict(sorted(out.items()))


def _parent(path: Any) -> Any:
    if isinstance(path, Path):
        return path.parent
    from ..storage import Location

    if isinstance(path, Location):
        return Location(str(path).rsplit("/", 1)[0], path.fs, path.path.rsplit("/", 1)[0])
    return Path(path).parent


def member_tar(sidecar: Any, tar_name: str) -> Any:
    """The tar a sidecar row names (its ``tar`` column), in the sidecar's folder."""
    return _parent(sidecar) / tar_name


def read_sidecar(path: Any) -> list[dict]:
    from ..storage import Location

    try:
        if isinstance(path, Location):
            rows = pq.read_table(path.path, filesystem=path.fs).to_pylist()
        else:
            rows = pq.read_table(path).to_pylist()
    except FileNotFoundError:
        raise UserError(f"{path}: sidecar missing") from None
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise UserError(f"{path}: damaged sidecar ({str(e).splitlines()[0][:200]})") from None
    for r in rows:
        r["meta"] = json.loads(r["meta"]) if r.get("meta") else {}
        r["_split_dir"] = _parent(path)
    return rows


def _open_tar(tar_path: Any):
    from ..storage import Location, is_uri

    if isinstance(tar_path, Location):
        return tar_path.fs.open_input_file(tar_path.path)
    if is_uri(str(tar_path)):
        loc = Location(str(tar_path))
        return loc.fs.open_input_file(loc.path)
    return open(tar_path, "rb")  # noqa: SIM115 - closed by the caller


def read_member(tar_path: Any, offset: int | None, size: int | None, fh_cache: dict | None = None) -> bytes | None:
    """``size`` bytes at ``offset`` of a tar (a sidecar's ``*_offset``/``*_size`` columns). A short read
    (a truncated or damaged shard) is a one-line UserError naming the tar, never fewer bytes."""
    if offset is None or size is None:
        return None
    if offset < 0 or size < 0:
        raise UserError(f"{tar_path}: damaged shard: the sidecar gives member offset {offset}, size {size}")
    own = fh_cache is None
    try:
        fh = None if own else fh_cache.get(str(tar_path))
        if fh is None:
            fh = _open_tar(tar_path)
            if not own:
                fh_cache[str(tar_path)] = fh
        try:
            fh.seek(offset)
            data = fh.read(size)
        finally:
            if own:
                fh.close()
    except FileNotFoundError:
        raise UserError(f"{tar_path}: shard tar missing") from None
    except OSError as e:
        raise UserError(f"{tar_path}: cannot read the shard ({e})") from None
    if len(data) != size:
        raise UserError(f"{tar_path}: damaged shard (truncated?): member at byte {offset} needs {size} bytes, "
                        f"the file gives {len(data)}")
    return data


def iter_output_rows(root: Path) -> Iterator[dict]:
    """Every sidecar row of exactly the folder ``root`` (an output root or one generation folder)."""
    for splits in shard_sidecars(root, resolve=False).values():
        for p in splits.values():
            yield from read_sidecar(p)


# -- reports ----------------------------------------------------------------------------------

REPORT_FILE = "filter_report.json"
REPORT_DIR = "filter_report"


def _draw_histogram(path: Path, name: str, kept: np.ndarray, rejected: np.ndarray, edges: np.ndarray,
                    threshold: float | None, op: str | None) -> None:
    """A stacked histogram (kept green, rejected red) with the threshold as a blue line, drawn with OpenCV."""
    W, H, L, R, T, B = 720, 420, 60, 20, 40, 60
    img = np.full((H, W, 3), 255, np.uint8)
    hk, _ = np.histogram(kept, edges)
    hr, _ = np.histogram(rejected, edges)
    top = max(1, int((hk + hr).max()))
    pw, ph = W - L - R, H - T - B
    nb = len(edges) - 1
    for i in range(nb):
        x0 = L + int(i * pw / nb)
        x1 = L + int((i + 1) * pw / nb) - 1
        yk = int(hk[i] / top * ph)
        yr = int(hr[i] / top * ph)
        base = T + ph
        if yk:
            cv2.rectangle(img, (x0, base - yk), (x1, base), (60, 170, 60), -1)
        if yr:
            cv2.rectangle(img, (x0, base - yk - yr), (x1, base - yk), (60, 60, 210), -1)
    cv2.line(img, (L, T + ph), (L + pw, T + ph), (0, 0, 0), 1)
    cv2.line(img, (L, T), (L, T + ph), (0, 0, 0), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    lo, hi = float(edges[0]), float(edges[-1])
    for j in range(5):
        v = lo + (hi - lo) * j / 4
        x = L + int(pw * j / 4)
        cv2.line(img, (x, T + ph), (x, T + ph + 5), (0, 0, 0), 1)
        cv2.putText(img, f"{v:.3g}", (x - 18, T + ph + 22), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, str(top), (5, T + 10), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    title = f"{name}: kept {len(kept)} (green), rejected {len(rejected)} (red)"
    if threshold is not None and hi > lo:
        x = L + int(np.clip((threshold - lo) / (hi - lo), 0, 1) * pw)
        cv2.line(img, (x, T), (x, T + ph), (200, 80, 0), 2)
        title += f", cut {op} {threshold:.3g} (blue)"
    cv2.putText(img, title, (L, 25), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "score", (L + pw // 2 - 20, H - 15), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    # OpenCV writes BGR: the colours above are BGR triples
    cv2.imwrite(str(path), img)


def build_report(rows: list[dict], bins: int = 30) -> dict:
    """Per-score statistics (kept/rejected histograms, percentiles), drop counts per rule, thresholds."""
    values: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    thresholds: Counter = Counter()
    per_rule: Counter = Counter()
    also_failed: Counter = Counter()
    scored = filtered_out = 0
    profiles: Counter = Counter()
    for r in rows:
        meta = r.get("meta") or {}
        scores = meta.get("scores") or {}
        flt = meta.get("filter") or {}
        if flt:
            scored += 1
            profiles[flt.get("profile", "?")] += 1
            thresholds[json.dumps(flt.get("thresholds", {}), sort_keys=True)] += 1
            failed = flt.get("failed") or []
            prior = flt.get("prior_drop")
            for f in failed:
                field = rule_of_reason(f) or f
                if prior:
                    also_failed[field] += 1
                else:
                    per_rule[field] += 1
            if failed and not prior:
                filtered_out += 1
        for k, v in scores.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                values[k].append((float(v), bool(r.get("keep"))))
    used = json.loads(thresholds.most_common(1)[0][0]) if thresholds else {}
    report: dict[str, Any] = {
        "rows": len(rows), "rows_scored": scored, "rows_dropped_by_filter": filtered_out,
        "profiles": dict(profiles), "thresholds": used,
        "threshold_sets": len(thresholds),
        "drops_per_rule": dict(sorted(per_rule.items())),
        "failed_rules_of_rows_dropped_earlier": dict(sorted(also_failed.items())),
        "scores": {},
    }
    for name, vals in sorted(values.items()):
        arr = np.array([v for v, _ in vals], np.float64)
        keep = np.array([k for _, k in vals], bool)
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, bins + 1)
        hk, _ = np.histogram(arr[keep], edges)
        hr, _ = np.histogram(arr[~keep], edges)
        report["scores"][name] = {
            "count": int(arr.size), "mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()),
            "percentiles": {f"p{q}": float(np.percentile(arr, q)) for q in (1, 5, 25, 50, 75, 95, 99)},
            "histogram": {"edges": [float(e) for e in edges], "kept": hk.tolist(), "rejected": hr.tolist()},
        }
    return report


def write_report(root: Path, rows: list[dict] | None = None, bins: int = 30) -> dict:
    """Write ``filter_report.json`` and ``filter_report/<score>.png`` into the output folder."""
    root = Path(root)
    if rows is None:
        rows = list(iter_output_rows(root))
    rep = build_report(rows, bins)
    d = root / REPORT_DIR
    d.mkdir(exist_ok=True)
    for old in d.glob("*.png"):
        old.unlink()
    thr_of_score = {rule.score: (rep["thresholds"].get(field), rule.op) for field, rule in RULES.items()}
    for name, st in rep["scores"].items():
        vals_k = [float((r["meta"].get("scores") or {})[name]) for r in rows
                  if r.get("keep") and _finite((r["meta"].get("scores") or {}).get(name))]
        vals_r = [float((r["meta"].get("scores") or {})[name]) for r in rows
                  if not r.get("keep") and _finite((r["meta"].get("scores") or {}).get(name))]
        thr, op = thr_of_score.get(name, (None, None))
        png = d / f"{name}.png"
        _draw_histogram(png, name, np.array(vals_k), np.array(vals_r), np.array(st["histogram"]["edges"]), thr, op)
        st["png"] = f"{REPORT_DIR}/{png.name}"
    (root / REPORT_FILE).write_text(json.dumps(rep, indent=1, sort_keys=True))
    return rep


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
