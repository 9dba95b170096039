"""A cheap upper-ish estimate of a request's tokens, reserved against TPM at admission.

The reservation is corrected with the provider's real usage when the response ends, so
this only needs to be in the right ballpark; it must be cheap (no tokenizer on the hot path).
"""

from __future__ import annotations

from typing import Any

# ~4 characters per token for English text with BPE tokenizers; per-message framing ~4 tokens.
_CHARS_PER_TOKEN = 4
_PER_MESSAGE = 4
# The largest completion budget and ``n`` a request may ask for (the chat route answers 400 past
# them): reservations are Redis integers, and max_tokens x n must stay far inside 64 bits.
MAX_COMPLETION_TOKENS = 2**31 - 1
MAX_N = 128


def _text_len(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        n = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                n += len(text) if isinstance(text, str) else 0
        return n
    return 0


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    total = 0
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                total += _PER_MESSAGE + _text_len(m.get("content")) // _CHARS_PER_TOKEN
    elif "input" in body:  # embeddings
        inp = body["input"]
        if isinstance(inp, str):
            total += len(inp) // _CHARS_PER_TOKEN + 1
        elif isinstance(inp, list):
            total += sum(len(x) // _CHARS_PER_TOKEN + 1 if isinstance(x, str) else len(x) for x in inp)
    return total


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt estimate plus the completion budget the caller asked for (``max_tokens`` x ``n``)."""
    budget = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    n = body.get("n") or 1
    if type(budget) is not int or type(n) is not int:  # a bool is an int to isinstance
        budget, n = 0, 1
    budget = min(max(0, budget), MAX_COMPLETION_TOKENS)
    return estimate_prompt_tokens(body) + budget * min(max(1, n), MAX_N)
