"""What the LLM is asked, and the deterministic template path used without an endpoint.

An *edit* is described by :class:`EditSpec` (edit type, the edited object before and after, the
captions of source and target). :func:`instruction_messages` turns it into chat messages asking for
``{"instruction": "..."}``; :func:`template_instruction` fills one of the task's hand-written
templates instead (``configs/instructions/<task>.txt`` through :mod:`instructdiffusion_data.instructions`;
placeholders ``{object}`` (= ``{phrase}``) for removal and addition, ``{source}`` and ``{target}``
for replacement). Built-in templates cover a task whose file is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .. import instructions as tmpl
from ..errors import ConfigError

log = logging.getLogger(__name__)

EDIT_TASKS = ("edit_remove", "edit_add", "edit_replace")

# Used only when configs/instructions/<task>.txt is missing (an installed package without configs/).
BUILTIN_TEMPLATES = {
    "edit_remove": [
        "remove the {object}", "delete the {object} from the image", "take away the {object}",
        "erase the {object}", "get rid of the {object}", "make the {object} disappear",
        "remove the {object} from the picture", "clear away the {object}", "eliminate the {object}",
        "please remove the {object}",
    ],
    "edit_add": [
        "add {object}", "add {object} to the image", "put {object} in the picture", "insert {object}",
        "place {object} in the scene", "include {object} in the image", "make the image show {object}",
        "please add {object}", "draw {object} into the picture", "bring {object} into the scene",
    ],
    "edit_replace": [
        "change the {source} to {target}", "replace the {source} with {target}", "turn the {source} into {target}",
        "swap the {source} for {target}", "make the {source} {target}", "transform the {source} into {target}",
        "please change the {source} to {target}", "substitute {target} for the {source}",
        "convert the {source} into {target}", "have {target} instead of the {source}",
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
        """Template placeholder values (aliases included, so any template file style fills)."""
        v = {"object": self.obj, "phrase": self.obj, "source": self.obj}
        if self.target_obj:
            v["target"] = self.target_obj
        if self.source_caption:
            v["source_caption"] = self.source_caption
        if self.target_caption:
            v["target_caption"] = self.target_caption
        return v


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
