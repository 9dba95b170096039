"""Request specs -> llguidance grammar strings, checked before a request reaches the engine.

A grammar string is llguidance's serialized grammar (what ``LLMatcher`` takes); it carries no
tokenizer, so it is built and validated at the API edge and compiled per sequence in the engine.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

# JSON output may be laid out freely, but each run of whitespace is bounded: a small model can
# otherwise loop on newlines until max_tokens and leave JSON that never closes.
JSON_OPTIONS: dict[str, Any] = {"whitespace_pattern": r"[\x20\x0A\x0D\x09]{1,40}"}


class GrammarError(ValueError):
    """The schema, regex or grammar cannot be compiled; the message says why."""


def _checked(grammar: str, what: str) -> str:
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GrammarError(f"invalid {what}: {messages[0].strip()}")
    return grammar


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """Output that parses as JSON and validates against ``schema``."""
    if not isinstance(schema, dict):
        raise GrammarError("invalid JSON schema: must be a JSON object")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except ValueError as exc:
        raise GrammarError(f"invalid JSON schema: {exc}") from None
    return _checked(grammar, "JSON schema")


def json_object_grammar() -> str:
    """Any JSON object (``response_format: json_object``)."""
    return json_schema_grammar({"type": "object"})


def regex_grammar(pattern: str) -> str:
    return _checked(llguidance.LLMatcher.grammar_from_regex(pattern), "regex")


def choice_grammar(choices: list[str]) -> str:
    """Exactly one of ``choices``, verbatim."""
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise GrammarError("invalid choice list: must be non-empty strings")
    alternatives = " | ".join(json.dumps(c) for c in choices)
    return lark_grammar(f"start: {alternatives}\n")


def lark_grammar(lark: str) -> str:
    """A grammar in llguidance's Lark dialect (``%json {...}`` embeds a JSON schema)."""
    return _checked(llguidance.LLMatcher.grammar_from_lark(lark), "grammar")
