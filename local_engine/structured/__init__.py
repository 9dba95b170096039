"""Constrained decoding: request specs compiled to llguidance grammars, and per-sequence guides
that mask the logits to the tokens the grammar allows next."""

from local_engine.structured.grammar import (
    GrammarError,
    choice_grammar,
    json_object_grammar,
    json_schema_grammar,
    lark_grammar,
    regex_grammar,
)
from local_engine.structured.guide import Guide, GuideFactory, apply_bitmask

__all__ = [
    "GrammarError",
    "Guide",
    "GuideFactory",
    "apply_bitmask",
    "choice_grammar",
    "json_object_grammar",
    "json_schema_grammar",
    "lark_grammar",
    "regex_grammar",
]
