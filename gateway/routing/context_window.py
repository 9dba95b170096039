"""The pre-call context-window check: a request that cannot fit is refused before any upstream call.

The rule, conservative on purpose (a request that fits must never be refused):

- The request's size is the door's ``DoorRequest.estimated_tokens``: the prompt at ~4 characters
  a token (plus a few per message on some doors) and the completion budget it asked for
  (``max_tokens`` / ``max_completion_tokens``). Images and other non-text parts count 0.
- No tokenizer packs more than 8 characters a token on average over a prompt (English averages
  4-5, code 3-4, CJK 1-2), so the real prompt is at least half its estimate, and the real total
  at least half the estimated total.
- A deployment's window is its model's ``max_input_tokens + max_output_tokens`` (from the price
  table, or ``model_info.max_input_tokens`` / ``max_output_tokens``): an upper bound whether the
  provider counts the completion inside the context (OpenAI, Anthropic) or apart (Gemini).
- So a request is refused when its estimate exceeds **twice** that window: then even at half the
  estimate it needs more than the model's input and output limits together. A deployment without
  a known ``max_input_tokens`` is never checked. Only chat-capable doors are checked (chat,
  messages, responses); an embeddings batch is limited per input, not in total.

The refusal is OpenAI's 400 ``context_length_exceeded``, which the router treats as the upstream's
own (``context_window_fallbacks`` when configured). Per request the check is one integer compare
against ``Deployment.context_limit``, worked out when the deployment is built.
"""

from __future__ import annotations

from providers.errors import ProviderError

# The real prompt is at least 1/SAFETY of its estimate (see the rule above).
SAFETY = 2
# ``context_limit`` of a deployment whose window is unknown: no estimate exceeds it.
NO_LIMIT = 2**62


def context_limit(max_input_tokens: int | None, max_output_tokens: int | None) -> int:
    """The estimate above which a request certainly cannot fit (``NO_LIMIT`` when unknown)."""
    if not isinstance(max_input_tokens, int) or max_input_tokens <= 0:
        return NO_LIMIT
    output = max_output_tokens if isinstance(max_output_tokens, int) and max_output_tokens > 0 else 0
    return SAFETY * (max_input_tokens + output)


def context_window_exceeded(model: str, max_input_tokens: int | None, estimated_tokens: int) -> ProviderError:
    """OpenAI's 400 for a request too large for ``model`` (the router falls back on it)."""
    return ProviderError(
        400,
        f"This model's maximum context length is {max_input_tokens} tokens. However, your request is "
        f"estimated at {estimated_tokens} tokens (messages and max_tokens), well beyond it. Please "
        "reduce the length of the messages or the completion.",
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )
