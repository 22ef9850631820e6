"""Quality-filter rules, output reading and reports, shared by the ``quality_filter`` stage and the
``idd filter`` / ``idd giqa`` commands (a stage never imports another stage; commands never recompute).

A *rule* is a threshold field name (the same name in the stage config, in ``meta["filter"]
["thresholds"]`` and in ``idd filter --set``) bound to one score of ``meta["scores"]`` and a
comparison. A row fails a rule when its score is present and on the wrong side. The failure's drop
class is the rule's fixed text, e.g. ``aesthetic_tgt below minimum`` (the same for every row whatever
the threshold); the row's score and the threshold are the drop's details (``value=``, ``threshold=``)
and ``meta["filter"]["thresholds"]``. Outputs written before this naming say ``aesthetic_tgt<5.0``:
:func:`rule_of_reason` reads both. The scores themselves are computed by :mod:`.quality_scorers`; the
report over an output is :mod:`.quality_report`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    field: str  # threshold name (config / --set)
    score: str  # key in meta["scores"]
    op: str  # "<": fails below the threshold; ">": fails above it
    doc: str

    @property
    def cls(self) -> str:
        """The drop class of a row failing this rule (fixed text, no numbers)."""
        return f"{self.score} {'below minimum' if self.op == '<' else 'above maximum'}"


RULES: dict[str, Rule] = {r.field: r for r in (
    Rule("aesthetic_tgt_min", "aesthetic_tgt", "<",
         "the target's aesthetic score (0-10) is below this: the edited image is ugly (paper: t1)"),
    Rule("giqa_tgt_min", "giqa_tgt", "<",
         "the target's GIQA score is below this: the edited image is unlike the good reference images (paper: t2)"),
    Rule("aesthetic_diff_max", "aesthetic_diff", ">",
         "|source - target| aesthetic score is above this: the edit changed the image's quality (paper: t3)"),
    Rule("giqa_diff_max", "giqa_diff", ">",
         "|source - target| GIQA score is above this: the edit changed how typical the image looks (paper: t3)"),
    Rule("edit_change_min", "edit_change", "<", "mean |target - source| inside the mask (0-255) is below this: "
                                                "the edit changed nothing"),
    Rule("background_change_max", "background_change", ">", "mean |target - source| outside the dilated mask "
                                                            "(0-255) is above this: the background moved"),
    Rule("replace_gain_min", "replace_gain", "<", "sim(target region, reference) - sim(source region, "
                                                  "reference) is below this: the region did not become the reference"),
)}

SCORE_NAMES = ("aesthetic_src", "aesthetic_tgt", "aesthetic_diff", "giqa_src", "giqa_tgt", "giqa_diff",
               "edit_change", "background_change", "replace_gain")

_REF_PCT = re.compile(r"^ref:p(\d+(?:\.\d+)?)$")


def fmt_threshold(value: float) -> str:
    return repr(float(value))


def reason(rule: Rule, threshold: float | None = None) -> str:
    """The drop class of a row failing ``rule`` (``threshold`` is a detail, not part of it)."""
    return rule.cls


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


def is_threshold_spec(value: Any) -> bool:
    """True for what a threshold may be set to: a number, null/none/off, or ``ref:pN``."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    if text.lower() in ("none", "null", "off", "") or _REF_PCT.match(text):
        return True
    try:
        float(text)
        return True
    except ValueError:
        return False


def resolve_thresholds(values: dict[str, Any], giqa_percentiles: dict | None,
                       giqa: bool = True) -> tuple[dict[str, float | None], dict[str, str]]:
    """``({rule: number or None}, {rule: "ref:pN" spec})`` for every rule of :data:`RULES` from the
    configured ``values``; GIQA rules are off without a reference (``giqa`` False)."""
    thresholds: dict[str, float | None] = {}
    specs: dict[str, str] = {}
    for f in RULES:
        v = values.get(f)
        if f.startswith("giqa") and not giqa:
            thresholds[f] = None
            continue
        thresholds[f] = resolve_threshold(f, v, giqa_percentiles)
        if isinstance(v, str):
            specs[f] = v
    return thresholds, specs


@dataclass(frozen=True)
class Failure:
    """One failed rule of one row: its drop class and the numbers behind it."""

    rule: Rule
    value: float
    threshold: float

    @property
    def cls(self) -> str:
        return self.rule.cls

    def detail(self) -> dict[str, float]:
        """Keyword details of the drop (``schema.drop(row, f.cls, **f.detail())``)."""
        return {"value": round(float(self.value), 6), "threshold": float(self.threshold)}


def failures(scores: dict[str, float], thresholds: dict[str, float | None]) -> list[Failure]:
    """The rules a row's ``scores`` fail under ``thresholds``, in :data:`RULES` order. A rule whose
    threshold is None or whose score is absent (or not finite) is not applied."""
    out = []
    for field, rule in RULES.items():
        thr = thresholds.get(field)
        s = scores.get(rule.score)
        if thr is None or not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
            continue
        if (rule.op == "<" and s < thr) or (rule.op == ">" and s > thr):
            out.append(Failure(rule, float(s), float(thr)))
    return out


def evaluate(scores: dict[str, float], thresholds: dict[str, float | None]) -> list[str]:
    """The rules a row fails, as drop classes (:attr:`Rule.cls`), in :data:`RULES` order."""
    return [f.cls for f in failures(scores, thresholds)]


def rule_of_reason(text: str) -> str | None:
    """The rule (threshold field) a drop class or reason names: ``aesthetic_tgt below minimum`` (with or
    without its ``(value=..., threshold=...)`` details) or the older ``aesthetic_tgt<4.5``."""
    text = (text or "").strip()
    for field, rule in RULES.items():
        if text == rule.cls or text.startswith(rule.cls + " (") or text.startswith(rule.score + rule.op):
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
# The report streams the sidecars (bounded memory); it lives in .quality_report, re-exported here.

from .quality_report import REPORT_DIR, REPORT_FILE, build_report, write_report  # noqa: E402,F401
