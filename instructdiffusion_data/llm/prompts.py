"""What the LLM is asked, and the deterministic template path used without an endpoint.

An *edit* is described by :class:`EditSpec` (edit type, the edited object before and after, the
captions of source and target). :func:`instruction_messages` turns it into chat messages asking for
``{"instruction": "..."}``; :func:`template_instruction` fills one of the task's hand-written
templates instead (``configs/instructions/<task>.txt`` through :mod:`instructdiffusion_data.instructions`;
placeholders ``{phrase}`` (= ``{object}``) for removal, ``{a_phrase}`` for addition, ``{source}`` and
``{target}`` for replacement). Built-in templates cover a task whose file is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .. import instructions as tmpl
from ..errors import ConfigError
from ..text import removal_phrase, with_article

log = logging.getLogger(__name__)

EDIT_TASKS = ("edit_remove", "edit_add", "edit_replace")

# Used only when configs/instructions/<task>.txt is missing (an installed package without configs/).
BUILTIN_TEMPLATES = {
    "edit_remove": [
        "Remove the {phrase}.", "Delete the {phrase} from the image.", "Take away the {phrase}.", "Erase the {phrase}.",
        "Get rid of the {phrase}.", "Make the {phrase} disappear.", "Remove the {phrase} from the picture.",
        "Clear away the {phrase}.", "Eliminate the {phrase}.", "Please remove the {phrase}.",
    ],
    "edit_add": [
        "Add {a_phrase}.", "Add {a_phrase} to the image.", "Put {a_phrase} in the picture.", "Insert {a_phrase}.",
        "Place {a_phrase} in the scene.", "Include {a_phrase} in the image.", "Make the image show {a_phrase}.",
        "Please add {a_phrase}.", "Draw {a_phrase} into the picture.", "Bring {a_phrase} into the scene.",
    ],
    "edit_replace": [
        "Change the {source} to {target}.", "Replace the {source} with {target}.", "Turn the {source} into {target}.",
        "Swap the {source} for {target}.", "Transform the {source} into {target}.",
        "Please change the {source} to {target}.", "Substitute {target} for the {source}.",
        "Convert the {source} into {target}.", "Put {target} where the {source} is.",
        "Exchange the {source} for {target}.",
    ],
}


@dataclass
class EditSpec:
    task: str  # edit_remove | edit_add | edit_replace
    obj: str  # the edited object: removed / added object, or the replaced (source) object
    target_obj: str | None = None  # replacement: what the object becomes
    source_caption: str | None = None  # caption of the whole source image
    target_caption: str | None = None  # caption of the whole target image

    def objects(self) -> list[str]:
        """What a valid instruction must mention (one of them)."""
        return [o for o in (self.obj, self.target_obj) if o]

    def values(self) -> dict[str, str]:
        """Template placeholder values (aliases included, so any template file style fills):
        ``{object}``/``{phrase}``/``{source}`` (no leading article: templates say "the"),
        ``{a_phrase}`` (with an indefinite article, for "add {a_phrase}"), ``{target}``."""
        obj = strip_article(self.obj)
        v = {"object": obj, "phrase": obj, "source": obj, "a_phrase": with_indefinite_article(obj)}
        if self.target_obj:
            v["target"] = with_indefinite_article(strip_article(self.target_obj))
        if self.source_caption:
            v["source_caption"] = self.source_caption
        if self.target_caption:
            v["target_caption"] = self.target_caption
        return v


def label_text(label: str) -> str:
    """A dataset's class name as running text: OpenImages' "Human face" -> "human face" (an
    all-caps or mixed-case first word such as "TV" or "iPod" is kept)."""
    first = label.split()[0] if label.split() else ""
    return label[:1].lower() + label[1:] if first[:1].isupper() and first[1:].islower() else label


def strip_article(phrase: str) -> str:
    """"the blue bird" -> "blue bird" (a lone word is kept as it is)."""
    return removal_phrase(phrase)


def with_indefinite_article(phrase: str) -> str:
    """"red car" -> "a red car", "old man" -> "an old man", "white clouds", "two dogs", "grass"."""
    return with_article(phrase)


SYSTEM = ("You write instructions for an image-editing dataset. Each instruction is one short, natural, "
          "imperative sentence that a user would type to an image editor. Answer only with a JSON object "
          'of the form {"instruction": "..."} and nothing else.')

_ASK = {
    "edit_remove": "Edit: remove an object from the image.\nObject to remove: {obj}\n{captions}"
                   "Write the instruction that asks to remove this object. Name the object.",
    "edit_add": "Edit: add an object to the image.\nObject to add: {obj}\n{captions}"
                "Write the instruction that asks to add this object. Name the object.",
    "edit_replace": "Edit: replace one object with another.\nObject in the source image: {obj}\n"
                    "It becomes: {target}\n{captions}"
                    "Write the instruction that asks for this change, for example: given \"a running dog\" "
                    "and \"a cute cat with black and white stripes\", \"please change the running dog to a cute "
                    "cat with black and white stripes\". Name the new object.",
}


def instruction_messages(spec: EditSpec, max_words: int = 25) -> list[dict]:
    if spec.task not in _ASK:
        raise ValueError(f"no LLM prompt for task {spec.task!r} (expected one of {', '.join(EDIT_TASKS)})")
    caps = ""
    if spec.source_caption:
        caps += f"Caption of the source image: {spec.source_caption}\n"
    if spec.target_caption:
        caps += f"Caption of the edited image: {spec.target_caption}\n"
    user = _ASK[spec.task].format(obj=spec.obj, target=spec.target_obj or "", captions=caps)
    user += f" Use at most {max_words} words."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def task_templates(task: str, directory: str | None = None) -> tuple[list[str], str]:
    """The task's templates and where they came from (file path, or ``builtin``)."""
    try:
        path = tmpl.template_path(task, directory)
        return tmpl.load_templates(task, directory), str(path.name)
    except ConfigError:
        if task in BUILTIN_TEMPLATES:
            log.warning("no instruction templates for %s on disk; using the built-in ones", task)
            return list(BUILTIN_TEMPLATES[task]), "builtin"
        raise


def template_instruction(spec: EditSpec, rng: np.random.Generator, templates: list[str]) -> tuple[int, str]:
    """Fill a template chosen with ``rng`` (seeded per row: same row, same text)."""
    return tmpl.choose(templates, rng, **spec.values())
