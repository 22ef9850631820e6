"""LLM side of the data engine: an OpenAI-compatible client with retries, cache and budget
(:mod:`.client`, :mod:`.cache`), the prompts and template fallback for edit instructions
(:mod:`.prompts`), and the checks an instruction must pass (:mod:`.validate`).

Used by the ``llm_instruction`` stage and by ``idd instructions expand``. See docs/captions_llm.md.
"""

from .cache import BudgetExhausted, SqliteCache, request_key
from .client import Completion, LLMClient, LLMConfig, LLMError
from .prompts import (
    EditSpec,
    instruction_messages,
    task_templates,
    template_instruction,
)
from .validate import InvalidResponse, Limits, check_instruction, parse_instruction

__all__ = [
    "BudgetExhausted", "Completion", "EditSpec", "InvalidResponse", "LLMClient", "LLMConfig", "LLMError", "Limits",
    "SqliteCache", "check_instruction", "instruction_messages", "parse_instruction", "request_key", "task_templates",
    "template_instruction",
]
