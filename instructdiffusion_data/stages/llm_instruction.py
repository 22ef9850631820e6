"""``llm_instruction``: write the edit instruction of IEIW rows (paper 3.2) with an LLM or templates.

Input rows: task ``edit_remove``, ``edit_add`` or ``edit_replace`` (other tasks pass through untouched).
What the edit is about is read from ``meta`` (first found wins):

- edited object (removed / added / replaced): ``meta["object"]``, ``meta["src_label"]``,
  ``meta["phrase"]`` (PhraseCut), ``meta["captions"]["src_region"]``, ``meta["region"]["label"]``;
- replacement target: ``meta["ref_label"]``, ``meta["captions"]["reference"]``,
  ``meta["captions"]["tgt_region"]``, ``meta["reference"]["label"]``;
- when the captions come from BLIP-2 (``meta["caption_provenance"]["backend"] == "blip2"``) the
  region captions go first ("a running dog" says more than the class name "dog"), as in the paper;
- whole-image captions: ``meta["captions"]["src"]`` and ``meta["captions"]["tgt"]`` (the ``caption``
  stage writes ``meta["captions"]``).

Output: ``instruction`` and ``meta["instruction_provenance"]`` =
``{"path": "llm", "model", "cached", "prompt_tokens", "completion_tokens", "attempts", "asked"}``
(tokens summed over the asks; ``attempts`` = HTTP attempts of the last answer, 0 when cached) or
``{"path": "template", "template_index", "templates"}`` (plus ``"fallback": reason`` when a
template stood in for a failed LLM call, see ``on_budget_exhausted`` / ``on_error``).

With ``llm.base_url`` unset the instruction comes from the task's templates
(``configs/instructions/<task>.txt``, or ``<task>.expanded.txt`` when present), chosen with the row's
seeded generator: the same row always gets the same text; a row that already carries an instruction
from an earlier template stage keeps it (``keep_existing``, provenance ``"by": "upstream"``). With an endpoint, every row is asked of the
LLM (cached, retried, budgeted: :mod:`instructdiffusion_data.llm`) and the answer validated; a row
whose answer fails validation is asked again with another seed (``validation_retries``, default 1;
each ask is a cached request) and then dropped with the reason's class (``llm_instruction: instruction
does not mention the edited object``; the answer's excerpt is a detail). When the budget is spent, the remaining rows are dropped with
``llm budget exhausted`` (default; a rerun with a larger budget and ``--overwrite`` re-asks only
those, the rest come from the cache) or, with ``on_budget_exhausted: template``, keep a template
instruction marked as such.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from ..config import rng
from ..contracts import ReferencePatch
from ..errors import ConfigError, RecordError
from ..llm import (
    BudgetExhausted,
    EditSpec,
    InvalidResponse,
    Limits,
    LLMClient,
    LLMConfig,
    LLMError,
    check_instruction,
    instruction_messages,
    parse_instruction,
    task_templates,
    template_instruction,
)
from ..llm.prompts import EDIT_TASKS, label_text
from ..llm.validate import Problem
from ..schema import Row, drop
from ..stage import Stage, StageConfig

log = logging.getLogger(__name__)


@dataclass
class LLMInstructionConfig(StageConfig):
    batch_size: int = 32
    llm: LLMConfig = field(default_factory=LLMConfig)  # llm.base_url unset: template path
    templates_dir: str | None = None  # default: configs/instructions of the checkout (IDD_CONFIG_DIR)
    on_budget_exhausted: Literal["drop", "template"] = "drop"
    on_error: Literal["drop", "template"] = "drop"  # an LLM call that failed for good (after retries)
    min_chars: int = field(default=8, metadata=rng(1))  # an instruction has at least this many characters
    max_chars: int = field(default=200, metadata=rng(1))
    min_words: int = field(default=2, metadata=rng(1))
    max_words: int = field(default=30, metadata=rng(1))
    per_row_seed: bool = True  # send a seed derived from the row key (diversity across identical inputs)
    # an answer failing validation is asked again (new seed) this many times
    validation_retries: int = field(default=1, metadata=rng(0))
    keep_existing: bool = True  # template path: a row that already has an instruction (e.g. from the
    # removal stage, same templates) keeps it and is marked {"path": "template", "by": "upstream"}


def _first(*values) -> str | None:
    for v in values:
        if isinstance(v, str) and v.strip():
            return " ".join(v.split())
    return None


def _label(value) -> str | None:
    """A dataset class name as running text ("Dog" -> "dog"); None for a missing one."""
    return label_text(value) if isinstance(value, str) and value.strip() else None


def edit_spec(row: Row) -> EditSpec:
    """The edit a row describes, from its task and meta (see module docstring)."""
    meta = row.get("meta") or {}
    caps = meta.get("captions") if isinstance(meta.get("captions"), dict) else {}
    region = meta.get("region") if isinstance(meta.get("region"), dict) else {}
    try:
        ref = ReferencePatch.from_meta(meta)
    except RecordError:
        ref = None
    prov = meta.get("caption_provenance") if isinstance(meta.get("caption_provenance"), dict) else {}
    pixels = prov.get("backend") == "blip2"  # captions of the pixels describe more than a class name
    labels = (meta.get("object"), meta.get("src_label"), meta.get("phrase"), _label(region.get("label")))
    obj = _first(caps.get("src_region"), *labels) if pixels else _first(*labels[:3], caps.get("src_region"), labels[3])
    if obj is None:
        raise ValueError("no edited object in meta: expected phrase, src_label, object or captions.src_region")
    target = None
    if row["task"] == "edit_replace":
        ref_labels = (_label(meta.get("ref_label")), _label(ref.label if ref else None))
        ref_caps = (caps.get("reference"), caps.get("tgt_region"))
        target = _first(*ref_caps, *ref_labels) if pixels else _first(ref_labels[0], *ref_caps, ref_labels[1])
        if target is None:
            raise ValueError("no replacement target in meta: expected ref_label, captions.reference or "
                             "captions.tgt_region")
    return EditSpec(task=row["task"], obj=obj, target_obj=target, source_caption=_first(caps.get("src")),
                    target_caption=_first(caps.get("tgt")))


class LLMInstruction(Stage):
    name = "llm_instruction"
    Config = LLMInstructionConfig

    def validate(self) -> None:
        c = self.config
        if c.min_chars > c.max_chars or c.min_words > c.max_words:
            raise ConfigError(f"stages({self.name}): min_chars/min_words must not exceed max_chars/max_words")
        if c.llm.base_url and not os.environ.get(c.llm.api_key_env):
            log.warning("%s: $%s is not set; requests go to %s without an API key (fine for a local vLLM or "
                        "llama.cpp server, a 401 for every row elsewhere)", self.name, c.llm.api_key_env, c.llm.base_url)
        if c.templates_dir:
            from ..config import check_path

            check_path(c.templates_dir, f"stages({self.name}).templates_dir", kind="dir")

    def __init__(self, config=None, *, seed: int = 0):
        super().__init__(config, seed=seed)
        c = self.config
        if c.llm.cache_path:
            # resolved on the driver (Ray workers may run in another working directory): a resolved copy,
            # the caller's config is left as it was
            llm = dataclasses.replace(c.llm, cache_path=os.path.abspath(os.path.expanduser(c.llm.cache_path)))
            self.config = dataclasses.replace(c, llm=llm)

    def setup(self) -> None:
        self.client = LLMClient(self.config.llm, seed=self.seed) if self.config.llm.base_url else None
        self._templates: dict[str, tuple[list[str], str]] = {}
        self.limits = Limits(self.config.min_chars, self.config.max_chars, self.config.min_words, self.config.max_words)

    def templates(self, task: str) -> tuple[list[str], str]:
        if task not in self._templates:
            self._templates[task] = task_templates(task, self.config.templates_dir)
        return self._templates[task]

    def _template(self, row: Row, spec: EditSpec, **extra) -> Row:
        templates, source = self.templates(spec.task)
        idx, text = template_instruction(spec, self.rng(row["key"], "template"), templates)
        row["instruction"] = text
        row["meta"]["instruction_provenance"] = {"path": "template", "template_index": idx, "templates": source, **extra}
        return row

    def process(self, rows: list[Row]) -> list[Row]:
        todo: list[tuple[Row, EditSpec]] = []
        out: list[Row] = []  # rows keep their order; rows sent to the LLM are changed in place
        for row in rows:
            if row["task"] not in EDIT_TASKS:
                out.append(row)
                continue
            try:
                spec = edit_spec(row)
            except ValueError as e:
                out.append(drop(row, f"{self.name}: {e}"))  # fixed texts naming the meta fields looked at
                continue
            if self.client is None:
                if self.config.keep_existing and row.get("instruction"):
                    tid = row["meta"].get("template_id")
                    row["meta"]["instruction_provenance"] = {"path": "template", "by": "upstream",
                                                             "template_index": tid}
                    out.append(row)
                else:
                    out.append(self._template(row, spec))
            else:
                todo.append((row, spec))
                out.append(row)
        if todo:
            self._ask(todo)
        return out

    def _ask(self, todo: list[tuple[Row, EditSpec]]) -> None:
        """Ask the LLM for every row of ``todo`` and set (or drop) each row in place. An answer that
        fails validation is asked again with another seed, up to ``validation_retries`` times."""
        c = self.config
        pending = list(todo)
        tokens: dict[str, list[int]] = {}
        for round_ in range(c.validation_retries + 1):
            requests = [instruction_messages(spec, c.max_words) for _, spec in pending]
            extra = [{"seed": self._seed(row["key"], round_)} if c.per_row_seed or round_ else {} for row, _ in pending]
            results = self.client.complete_many(requests, extra)
            failed: list[tuple[Row, EditSpec, str]] = []
            for (row, spec), res in zip(pending, results):
                if isinstance(res, BudgetExhausted):
                    if c.on_budget_exhausted == "template":
                        self._template(row, spec, fallback="llm budget exhausted")
                    else:
                        drop(row, "llm budget exhausted")
                    continue
                if isinstance(res, Exception):
                    if c.on_error == "template":
                        self._template(row, spec, fallback=str(res))
                    elif isinstance(res, LLMError):
                        drop(row, f"{self.name}: {res.reason}", **res.detail)
                    else:
                        drop(row, f"{self.name}: error {type(res).__name__}", error=str(res)[:300])
                    continue
                used = tokens.setdefault(row["key"], [0, 0])
                used[0] += res.prompt_tokens
                used[1] += res.completion_tokens
                row["meta"]["instruction_provenance"] = {
                    "path": "llm", "model": c.llm.model, "cached": res.cached, "prompt_tokens": used[0],
                    "completion_tokens": used[1], "attempts": res.attempts, "asked": round_ + 1}
                try:
                    text = parse_instruction(res.text)
                    reason = check_instruction(text, spec.objects(), self.limits)
                except InvalidResponse as e:
                    text, reason = res.text, Problem(e.reason, **e.detail)
                if reason:
                    failed.append((row, spec, reason))
                    row["meta"]["instruction_rejected"] = text
                    continue
                row["meta"].pop("instruction_rejected", None)
                row["instruction"] = text
            pending = [(row, spec) for row, spec, _ in failed]
            if not pending:
                break
            if round_ == c.validation_retries:
                for row, _, reason in failed:
                    drop(row, f"{self.name}: {reason}", **getattr(reason, "detail", {}))
        s = self.client.stats
        log.info("%s: %d rows; requests %d (retries %d), cache hits %d, tokens %d+%d, budget refused %d",
                 self.name, len(todo), s["requests"], s["retries"], s["cache_hits"], s["prompt_tokens"],
                 s["completion_tokens"], s["budget_refused"])

    def _seed(self, key: str, round_: int) -> int:
        return int(self.rng(key, "llm", *([round_] if round_ else [])).integers(2**31))


STAGE = LLMInstruction
