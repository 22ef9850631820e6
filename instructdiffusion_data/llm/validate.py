"""Checks on an instruction written by an LLM (or expanded template) before it enters the data.

:func:`parse_instruction` reads the JSON answer (``{"instruction": "..."}``; a Markdown code fence
around it is tolerated); :func:`check_instruction` applies the rules and returns the reason of the
first failure or ``None``. A reason is a :class:`Problem`: a string holding the fixed drop class
(``instruction too short``), with the per-row values (the instruction's excerpt, counts) in ``detail``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)

# Phrases that mark a refusal or a chatty non-answer instead of an instruction.
REFUSALS = (
    "i'm sorry", "i am sorry", "i apologize", "i cannot", "i can't", "i can not", "i won't", "i will not",
    "as an ai", "as a language model", "i'm unable", "i am unable", "unable to comply", "cannot assist",
    "can't assist", "cannot help with", "can't help with", "not able to provide", "i do not feel comfortable",
)

STOPWORDS = frozenset((
    "a", "an", "the", "of", "on", "in", "at", "to", "with", "and", "or", "for", "from", "by", "into", "onto",
    "over", "under", "near", "next", "its", "it", "this", "that", "these", "those", "is", "are", "be",
    "some", "any", "his", "her", "their", "there", "here", "up", "down", "out", "off", "left", "right",
    "top", "bottom", "front", "back", "side", "middle", "part", "area", "image", "picture", "photo",
))


def _snip(text: str, n: int = 80) -> str:
    """A short excerpt for a drop reason, without parentheses (the writer strips "(...)" details)."""
    return re.sub(r"[()]", " ", text or "")[:n]


class Problem(str):
    """Why an instruction is rejected: the string is the drop class (the same for every row with this
    fault), ``detail`` the row's values, passed to ``schema.drop`` as keyword details."""

    detail: dict

    def __new__(cls, reason: str, **detail):
        obj = super().__new__(cls, reason)
        obj.detail = {k: v for k, v in detail.items() if v is not None}
        return obj


class InvalidResponse(ValueError):
    """The answer cannot be used; ``reason`` is the drop class, ``detail`` the answer's excerpt."""

    def __init__(self, reason: str, **detail):
        self.reason = reason
        self.detail = detail
        super().__init__(reason)


@dataclass
class Limits:
    min_chars: int = 8
    max_chars: int = 200
    min_words: int = 2
    max_words: int = 40


def parse_instruction(text: str, field: str = "instruction") -> str:
    """The instruction string of a JSON answer; raises :class:`InvalidResponse`."""
    if text is None or not text.strip():
        raise InvalidResponse("llm answer empty")
    m = _FENCE.match(text)
    body = m.group(1) if m else text.strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        raise InvalidResponse("llm answer not JSON", answer=_snip(text)) from None
    if isinstance(data, dict):
        value = data.get(field)
    else:
        value = None
    if not isinstance(value, str):
        raise InvalidResponse(f"llm answer has no '{field}' string", answer=_snip(text))
    return " ".join(value.split())


def content_words(phrase: str) -> list[str]:
    words = re.findall(r"[a-z][a-z'-]*", (phrase or "").lower())
    return [w for w in words if w not in STOPWORDS and len(w) > 1]


def _stem(word: str) -> str:
    for suf in ("ies", "es", "s"):
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            return word[: -len(suf)] + ("y" if suf == "ies" else "")
    return word


def mentions(text: str, phrase: str) -> bool:
    """True when ``text`` names at least one content word of ``phrase`` (plural-insensitive).
    A phrase without content words ("it") is not checked."""
    want = {_stem(w) for w in content_words(phrase)}
    if not want:
        return True
    have = {_stem(w) for w in re.findall(r"[a-z][a-z'-]*", text.lower())}
    return bool(want & have)


def check_instruction(text: str, objects: list[str] | tuple[str, ...] = (),
                      limits: Limits | None = None) -> Problem | None:
    """The reason ``text`` is not a usable instruction, or ``None`` when it passes.

    Rules: non-empty; length within ``limits`` (characters and words); no leftover ``{placeholder}``;
    no refusal or apology; mentions at least one of ``objects`` (the edited object: the phrase for
    removal and addition, the source or target object for replacement) when any is given.
    """
    lim = limits or Limits()
    t = (text or "").strip()
    if not t:
        return Problem("instruction empty")
    if PLACEHOLDER.search(t):
        return Problem("instruction has a leftover placeholder", instruction=_snip(t))
    low = t.lower()
    if any(p in low.replace("\u2019", "'") for p in REFUSALS):
        return Problem("instruction is a refusal", instruction=_snip(t))
    n_words = len(t.split())
    if len(t) < lim.min_chars or n_words < lim.min_words:
        return Problem("instruction too short", instruction=_snip(t), chars=len(t), words=n_words)
    if len(t) > lim.max_chars or n_words > lim.max_words:
        return Problem("instruction too long", chars=len(t), words=n_words)
    objs = [o for o in objects if o and content_words(o)]
    if objs and not any(mentions(t, o) for o in objs):
        return Problem("instruction does not mention the edited object", object=_snip(objs[0], 40),
                       instruction=_snip(t))
    return None
