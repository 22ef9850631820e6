"""English phrase grammar shared by the instruction makers: articles and plurals.

"remove the {phrase}" wants the bare phrase ("red car"); "add {a_phrase}" wants it with the right
indefinite article ("a red car", "an old man") or none for plurals and mass nouns ("white clouds",
"two dogs", "grass").
"""

from __future__ import annotations

import re

_DETERMINERS = {"the", "a", "an", "this", "that", "these", "those"}
_NO_ARTICLE = {"some", "many", "several", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
               "few", "his", "her", "their", "its", "my", "our", "your", "both", "all", "more", "each"}
# Irregular plurals and nouns that read best without an article ("add grass", "add water").
_PLURAL_OR_MASS = {
    "people", "men", "women", "children", "feet", "teeth", "geese", "mice", "sheep", "fish", "deer",
    "grass", "water", "sky", "snow", "sand", "dirt", "hair", "foliage", "furniture", "smoke", "fog", "rain",
    "ice", "mud", "gravel", "pavement", "asphalt", "concrete", "traffic", "food", "meat", "rice", "bread",
    "lettuce", "broccoli", "cheese", "wood", "glass", "sunlight", "light", "shade", "shadow", "ocean", "sea",
    "clothing", "luggage", "scenery", "vegetation", "graffiti", "writing", "lettering", "text", "wallpaper",
    "jeans", "pants", "shorts", "glasses", "sunglasses", "scissors", "trousers", "leaves", "bushes",
}
_NOT_PLURAL_S = ("ss", "us", "is", "ous", "ics")
_AN_EXCEPTIONS = ("uni", "use", "usu", "uti", "uro", "eu", "one", "once", "ewe")
_AN_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def removal_phrase(phrase: str) -> str:
    """The phrase for "remove the {phrase}": lower-cased, without a leading article/demonstrative."""
    words = phrase.strip().split()
    if len(words) > 1 and words[0].lower() in _DETERMINERS:
        words = words[1:]
    return " ".join(words)


def _is_plural(noun: str) -> bool:
    n = noun.lower()
    if n in _PLURAL_OR_MASS:
        return True
    return len(n) > 2 and n.endswith("s") and not n.endswith(_NOT_PLURAL_S)


def _head_noun(words: list[str], name: str | None) -> str:
    if name:
        last = name.split()[-1].lower()
        if last in (w.lower() for w in words):
            return last
    # without a structure: the last word before the first relation word
    stops = {"on", "in", "of", "with", "near", "by", "at", "to", "next", "behind", "above", "below", "under",
             "beside", "wearing", "holding", "has", "having", "that", "which", "who", "left", "right", "over", "inside", "outside", "across", "along", "against", "between", "around", "for", "from"}
    head = words[0]
    for w in words[1:]:
        if w.lower() in stops:
            break
        head = w
    return head.lower()


def with_article(phrase: str, name: str | None = None) -> str:
    """The phrase as it follows "add": "a red car", "an old man", "white clouds", "two dogs"."""
    words = removal_phrase(phrase).split()
    if not words:
        return phrase
    first = words[0].lower()
    if first in _NO_ARTICLE or first[0].isdigit():
        return " ".join(words)
    if _is_plural(_head_noun(words, name)):
        return " ".join(words)
    return f"{indefinite_article(first)} {' '.join(words)}"


def indefinite_article(word: str) -> str:
    w = re.sub(r"[^a-z0-9]", "", word.lower())
    if not w:
        return "a"
    if w.startswith(_AN_SILENT_H):
        return "an"
    if w.startswith(_AN_EXCEPTIONS):
        return "a"
    return "an" if w[0] in "aeiou" else "a"
