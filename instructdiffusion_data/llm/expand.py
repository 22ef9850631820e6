"""Template expansion (paper 3.1): an LLM rewrites a task's hand-written templates into more.

:func:`expand_templates` asks in rounds (each round a new ``seed``, so a new cached request) for
rewrites of ``configs/instructions/<task>.txt`` and keeps a candidate only when

- its placeholders are exactly those of one hand-written template (``{joint}``, ``{color}``, ...
  intact, none invented, none lost) and its braces parse;
- it is not a refusal and its length is within bounds;
- it is neither an exact duplicate (case, punctuation and spacing ignored) nor a near duplicate
  (word-set Jaccard >= ``similarity``, or character similarity >= ``char_similarity``) of a
  hand-written template or of one already kept.

:func:`write_expanded` writes ``<task>.expanded.txt``: a header saying how it was made, the
hand-written templates, then the new ones, for a person to review. ``load_templates`` prefers that
file once it exists.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..instructions import NUMBER, template_problem
from .client import BudgetExhausted, LLMClient, LLMError
from .validate import REFUSALS

log = logging.getLogger(__name__)

_WORD = re.compile(r"\{[^{}]*\}|[a-z0-9']+")


def read_templates(path: Path) -> list[str]:
    """The templates of a hand-written file (one per line, '#' comments, blank lines ignored)."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def placeholders(template: str) -> frozenset[str] | None:
    """The placeholder names of a template, or None when its braces do not parse."""
    try:
        names = [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return None
    if any(not n.isidentifier() for n in names):
        return None
    return frozenset(names)


def normalise(template: str) -> str:
    return " ".join(_WORD.findall(template.lower()))


def similar(a: str, b: str, jaccard: float, char_ratio: float) -> bool:
    wa, wb = set(normalise(a).split()), set(normalise(b).split())
    if wa and wb and len(wa & wb) / len(wa | wb) >= jaccard:
        return True
    return difflib.SequenceMatcher(None, normalise(a), normalise(b)).ratio() >= char_ratio


@dataclass
class ExpandResult:
    task: str
    originals: list[str]
    new: list[str] = field(default_factory=list)
    requests: int = 0  # LLM answers used (cached or bought)
    cached: int = 0
    candidates: int = 0
    rejected: Counter = field(default_factory=Counter)
    stopped: str | None = None  # why expansion stopped before reaching n


def expansion_messages(task: str, originals: list[str], k: int) -> list[dict]:
    names = sorted(set().union(*(placeholders(t) or frozenset() for t in originals)))
    listing = "\n".join(f"- {t}" for t in originals)
    keep = ", ".join("{" + n + "}" for n in names if n != NUMBER) or "(none)"
    if NUMBER in names:
        keep += ("; {n:singular|plural} picks the words that count the marked things: keep that form, with "
                 "both a singular and a plural text, e.g. {n:a circle|circles}")
    return [
        {"role": "system", "content": "You rewrite instruction templates for an image-editing and vision dataset. "
                                      "Answer only with a JSON object of the form {\"templates\": [\"...\", ...]}."},
        {"role": "user", "content": (
            f"Task: {task}\nTemplates:\n{listing}\n\n"
            f"Write {k} new templates that mean the same thing, worded the way different users would type "
            f"a request: vary verbs, politeness and sentence structure. Keep every placeholder exactly as "
            f"written, with its curly braces ({keep}); each new template uses the same placeholders as one "
            f"of the templates above and no others. One sentence each.")},
    ]


def check_candidate(text: str, allowed: set[frozenset[str]], kept: list[str], max_chars: int = 160) -> str | None:
    """Why a candidate template is rejected, or None to keep it."""
    t = " ".join(text.split()) if isinstance(text, str) else ""
    if not t:
        return "empty"
    names = placeholders(t)
    if names is None or template_problem(t):
        return "broken placeholder"
    if names not in allowed:
        return "placeholders changed"
    if any(p in t.lower().replace("\u2019", "'") for p in REFUSALS):
        return "refusal"
    if len(t) > max_chars or len(t.split()) < 2:
        return "length"
    if any(normalise(t) == normalise(k) for k in kept):
        return "duplicate"
    return None


def expand_templates(client: LLMClient, task: str, originals: list[str], n: int, *, per_request: int = 10,
                     max_rounds: int | None = None, similarity: float = 0.8, char_similarity: float = 0.92,
                     seed: int = 0) -> ExpandResult:
    """Collect up to ``n`` new templates (see module docstring)."""
    res = ExpandResult(task=task, originals=list(originals))
    allowed = {placeholders(t) for t in originals if placeholders(t) is not None}
    if not allowed:
        raise ValueError(f"{task}: no parseable templates to expand")
    rounds = max_rounds if max_rounds is not None else max(3, 3 * -(-n // per_request))
    messages = expansion_messages(task, originals, per_request)
    for r in range(rounds):
        if len(res.new) >= n:
            break
        try:
            ans = client.complete(messages, seed=seed + r)
        except BudgetExhausted as e:
            res.stopped = f"llm budget exhausted ({e})"
            break
        except LLMError as e:
            res.stopped = str(e)
            break
        res.requests += 1
        res.cached += int(ans.cached)
        for cand in _candidates(ans.text):
            res.candidates += 1
            if len(res.new) >= n:
                break
            reason = check_candidate(cand, allowed, res.originals + res.new)
            if reason is None and any(similar(cand, k, similarity, char_similarity) for k in res.originals + res.new):
                reason = "near duplicate"
            if reason:
                res.rejected[reason] += 1
            else:
                res.new.append(" ".join(cand.split()))
    if res.stopped is None and len(res.new) < n:
        res.stopped = f"only {len(res.new)} new templates after {rounds} rounds"
    return res


def _candidates(text: str) -> list:
    m = re.match(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", text or "", re.DOTALL)
    try:
        data = json.loads(m.group(1) if m else text)
    except (json.JSONDecodeError, TypeError):
        return [None]  # counted as one rejected (empty) candidate
    items = data.get("templates") if isinstance(data, dict) else data
    return list(items) if isinstance(items, list) else [None]


def write_expanded(path: Path, res: ExpandResult, model: str) -> None:
    header = [
        f"# {res.task}: {len(res.originals)} hand-written templates + {len(res.new)} rewritten by {model}",
        f"# (idd instructions expand). Review before training; delete this file to use {res.task}.txt alone.",
    ]
    body = header + res.originals + ["# -- rewritten --"] + res.new
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(body) + "\n", encoding="utf-8")
    tmp.replace(path)
