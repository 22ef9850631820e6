"""Captions of a benchmark sample (paper 4.4): the source image's (BLIP-2) and the edited image's (an
LLM writes it from the source caption and the instruction).

**Source caption.** ``blip2``: BLIP-2 on the source image (:mod:`..models.blip2`). ``annotations`` (the
weight-free profile): the caption the JSONL gives (``caption``), or for a sample from an output its
``meta.captions.src``, else one built from its annotations ("a photo with the dog", as the ``caption``
stage's annotation backend does).

**Target caption.** A ``target_caption`` the JSONL gives is used as it is. Otherwise, with an LLM
endpoint (``llm.base_url``: any OpenAI-compatible server, through :class:`..llm.LLMClient` with its
cache, retries and budget) the LLM is asked for ``{"caption": "..."}`` given the source caption, the
instruction and the category, and the answer is checked (one line, ``min_words``..``max_words``, not the
source caption again; one more ask with another seed, then the sample is rejected). Without an endpoint, a
row of an output keeps its own ``meta.captions.tgt`` (the caption its `caption` stage wrote); otherwise
(offline, weight-free) :func:`rule_target_caption` rewrites the source caption: ``remove`` takes the
object's noun phrase out of it ("A person and a red dog on the grass." -> "A person on the grass."),
``add`` appends it ("..., with a red umbrella"), ``replace`` puts the new object in the old one's place.
The objects are the JSONL's ``object`` / ``target_object`` (or the output row's meta), else read from
the instruction ("remove the red dog", "change the cup to a vase"). A sample the rule cannot caption
(the object is not in the caption, the instruction does not parse) is rejected with the reason, never
given a made-up caption.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from ..config import rng
from ..llm import LLMConfig
from ..llm.prompts import strip_article
from ..text import with_article

log = logging.getLogger(__name__)

# drop classes
NO_SOURCE_CAPTION = "benchmark: no source caption"
NO_OBJECT = "benchmark: target caption: cannot read the edited object from the instruction"
OBJECT_NOT_IN_CAPTION = "benchmark: target caption: the edited object is not in the source caption"
LLM_REJECTED = "benchmark: target caption: LLM answer rejected"
LLM_FAILED = "benchmark: target caption: LLM request failed"


@dataclass
class TargetCaptionConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)  # llm.base_url unset: the offline rule
    min_words: int = field(default=2, metadata=rng(1))
    max_words: int = field(default=40, metadata=rng(1))
    retries: int = field(default=1, metadata=rng(0))  # asks again (another seed) after a rejected answer


# -- the objects of an edit --------------------------------------------------------------------

_PLEASE = r"^(?:please\s+|can you\s+|could you\s+)?"
_WHERE = r"(?:\s+(?:from|to|in|into|on|onto)\s+(?:the\s+|this\s+)?(?:image|picture|photo|scene|photograph))?"
_REMOVE = re.compile(_PLEASE + r"(?:remove|delete|erase|take away|take out|get rid of|eliminate|clear away|"
                     r"make)\s+(?P<obj>.+?)" + r"(?:\s+disappear)?" + _WHERE + r"\s*[.!]*$", re.I)
_ADD = re.compile(_PLEASE + r"(?:add|put|insert|place|include|draw|bring)\s+(?P<obj>.+?)" + _WHERE + r"\s*[.!]*$", re.I)
_CHANGE = re.compile(_PLEASE + r"(?:change|turn|transform|convert|make)\s+(?P<src>.+?)\s+(?:to|into|become)\s+"
                     r"(?P<tgt>.+?)\s*[.!]*$", re.I)
_REPLACE = re.compile(_PLEASE + r"(?:replace|swap|exchange|substitute)\s+(?P<src>.+?)\s+(?:with|for|by)\s+"
                      r"(?P<tgt>.+?)\s*[.!]*$", re.I)


def edit_objects(category: str, instruction: str) -> tuple[str | None, str | None]:
    """(the edited object, what it becomes) read from an instruction; (None, None) when it does not parse."""
    text = " ".join(instruction.split())
    if category == "remove":
        m = _REMOVE.match(text)
        return (strip_article(m["obj"]), None) if m else (None, None)
    if category == "add":
        m = _ADD.match(text)
        return (strip_article(m["obj"]), None) if m else (None, None)
    m = _CHANGE.match(text) or _REPLACE.match(text)
    return (strip_article(m["src"]), strip_article(m["tgt"])) if m else (None, None)


# -- the offline rule --------------------------------------------------------------------------

_DET = {"a", "an", "the", "one", "two", "three", "four", "some", "this", "that"}
_LINK = {"and", "with"}
_PREP = {"on", "in", "of", "near", "under", "to", "by", "at", "behind", "above", "below", "beside", "over"}


def _norm(token: str) -> str:
    return re.sub(r"[^\w-]", "", token.lower())


def _find(tokens: list[str], phrase: str) -> tuple[int, int] | None:
    """The token span of ``phrase`` in ``tokens`` widened to its noun phrase: up to two words before it
    (adjectives: "red dog" for "dog") and a determiner; None when the phrase is not there."""
    words = [_norm(w) for w in phrase.split() if _norm(w)]
    if not words:
        return None
    normed = [_norm(t) for t in tokens]
    for i in range(len(tokens) - len(words) + 1):
        if normed[i:i + len(words)] != words:
            continue
        start, end = i, i + len(words)
        # punctuation inside the phrase ends it ("dog, a cup": the phrase cannot span the comma)
        if any(re.search(r"[,.;:!?]$", t) for t in tokens[start:end - 1]):
            continue
        steps = 0
        while start > 0 and steps < 2 and normed[start - 1] not in _DET | _LINK and \
                not re.search(r"[,.;:!?]$", tokens[start - 1]) and normed[start - 1] not in _PREP | {"next"}:
            start -= 1
            steps += 1
        if start > 0 and normed[start - 1] in _DET:
            start -= 1
        return start, end
    return None


def _trailing(token: str) -> str:
    m = re.search(r"[,.;:!?]+$", token)
    return m.group(0) if m else ""


def _sentence(tokens: list[str], like: str) -> str:
    text = " ".join(t for t in tokens if t)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text).strip(" ,")
    if like[:1].isupper():
        text = text[:1].upper() + text[1:]
    return text


def remove_phrase(caption: str, obj: str) -> str | None:
    """``caption`` without the noun phrase of ``obj`` and its link word; None when ``obj`` is not in it."""
    tokens = caption.split()
    span = _find(tokens, obj)
    if span is None:
        return None
    i, j = span
    tail = _trailing(tokens[j - 1])
    nxt = _norm(tokens[j]) if j < len(tokens) else None
    prev = tokens[i - 1] if i > 0 else None
    if prev is not None and prev.endswith(",") and nxt == "and":  # "a, [b] and c" -> "a and c"
        tokens[i - 1] = prev[:-1]
        del tokens[i:j]
    elif tail == ",":  # "with [a, ] b and c" -> "with b and c"
        del tokens[i:j]
    elif nxt in _LINK and not tail:  # "[b] and c" -> "c"
        del tokens[i:j + 1]
    elif prev is not None and _norm(prev) in _LINK:  # "a and [b]" -> "a"; "x, a and [b]" -> "x and a"
        del tokens[i - 1:j]
        for k in range(i - 2, max(i - 6, -1), -1):  # the list's last comma becomes "and"
            if tokens[k].endswith((".", ";", ":")):
                break
            if tokens[k].endswith(","):
                tokens[k] = tokens[k][:-1]
                tokens.insert(k + 1, "and")
                i += 1
                break
        if tail and i - 2 >= 0:
            tokens[i - 2] += tail
    elif prev is not None and _norm(prev) in _PREP:  # "... under [the sky]." -> "...."
        start = i - 2 if i >= 2 and _norm(prev) == "to" and _norm(tokens[i - 2]) == "next" else i - 1
        del tokens[start:j]
        if tail and start > 0:
            tokens[start - 1] = tokens[start - 1].rstrip(",") + tail
    else:
        del tokens[i:j]
        if tail and i > 0:
            tokens[i - 1] = tokens[i - 1].rstrip(",") + tail
    if not [t for t in tokens if _norm(t)]:
        return None
    return _sentence(tokens, caption)


def replace_phrase(caption: str, obj: str, new: str) -> str | None:
    """``caption`` with the noun phrase of ``obj`` replaced by ``new`` (with its article); None when
    ``obj`` is not in it."""
    tokens = caption.split()
    span = _find(tokens, obj)
    if span is None:
        return None
    i, j = span
    tail = _trailing(tokens[j - 1])
    tokens[i:j] = [with_article(strip_article(new)) + tail]
    return _sentence(tokens, caption)


def rule_target_caption(category: str, caption: str, obj: str | None, new: str | None) -> tuple[str | None, str]:
    """(the target caption, how) by the offline rule, or (None, the drop class) when it cannot."""
    if not obj:
        return None, NO_OBJECT
    if category == "add":
        base = caption.rstrip(" .")
        return f"{base}, with {with_article(strip_article(obj))}", "rule:add"
    if category == "remove":
        out = remove_phrase(caption, obj)
        return (out, "rule:remove") if out else (None, OBJECT_NOT_IN_CAPTION)
    if not new:
        return None, NO_OBJECT
    out = replace_phrase(caption, obj, new)
    return (out, "rule:replace") if out else (None, OBJECT_NOT_IN_CAPTION)


# -- the LLM -----------------------------------------------------------------------------------

SYSTEM = ("You write captions for an image-editing benchmark. Given the caption of a source image and an "
          "editing instruction, write the caption of the image after the edit: one short sentence in the "
          "style of the source caption, describing the edited image as it is (never the edit itself). "
          'Answer only with a JSON object of the form {"caption": "..."}.')


def target_caption_messages(caption: str, instruction: str, category: str, max_words: int) -> list[dict]:
    kind = {"remove": "removal (an object is taken away)", "add": "addition (an object is added)",
            "replace": "replacement (an object becomes another)"}[category]
    user = (f"Caption of the source image: {caption}\nEditing instruction: {instruction}\nKind of edit: {kind}\n"
            f"Write the caption of the edited image, at most {max_words} words.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def check_target_caption(answer: str, source: str, cfg: TargetCaptionConfig) -> tuple[str | None, str]:
    """(the caption, "") or (None, why) for an LLM answer."""
    try:
        obj = json.loads(answer)
    except json.JSONDecodeError:
        return None, "answer is not JSON"
    text = obj.get("caption") if isinstance(obj, dict) else None
    if not isinstance(text, str) or not text.strip():
        return None, "answer has no caption"
    text = " ".join(text.split())
    n = len(text.split())
    if n < cfg.min_words or n > cfg.max_words:
        return None, f"caption has {n} words (allowed {cfg.min_words}-{cfg.max_words})"
    if text.rstrip(" .").lower() == source.rstrip(" .").lower():
        return None, "caption repeats the source caption"
    return text, ""
