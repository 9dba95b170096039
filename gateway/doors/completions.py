"""``POST /v1/completions``: OpenAI's legacy text completions, plain and streamed, passed through.

Reference: https://platform.openai.com/docs/api-reference/completions/create. ``prompt`` is a
string, an array of strings, an array of token ids or an array of those arrays. Streams end with
``[DONE]``; the usage chunk is always requested upstream and dropped unless the client asked
(``stream_options.include_usage``), as on chat.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gateway.doors.base import Door, DoorCall, DoorOperation, DoorRequest
from gateway.doors.chat import check_ints, check_stream, wants_usage
from gateway.doors.json_body import parse_object, require_model
from gateway.errors import bad_request
from gateway.limits.estimate import MAX_COMPLETION_TOKENS, MAX_N
from providers.contract import Operation

# OpenAI's default max_tokens for legacy completions.
DEFAULT_MAX_TOKENS = 16
_INT_FIELDS = (("max_tokens", 0, MAX_COMPLETION_TOKENS), ("n", 1, MAX_N), ("best_of", 1, MAX_N))
_PROMPT_ERROR = "'prompt' must be a string, array of strings, array of token ids, or array of those arrays"


class CompletionsDoor(Door):
    operation: ClassVar[DoorOperation] = "completions"
    capability: ClassVar[Operation] = "completions"

    async def read(self, raw: bytes, call: DoorCall) -> DoorRequest:
        body = parse_object(raw)
        model = require_model(body)
        if "prompt" not in body:
            raise bad_request("'prompt' is required", "prompt")
        chars = _prompt_size(body["prompt"])
        stream = check_stream(body)
        check_ints(body, _INT_FIELDS)
        cap = body.get("max_tokens")
        n = body.get("n") or 1
        estimate = chars + (cap if cap is not None else DEFAULT_MAX_TOKENS) * n
        return DoorRequest(
            model=model,
            stream=stream,
            body=body,
            cache_material=body,
            estimated_tokens=estimate,
            include_usage=stream and wants_usage(body),
        )


def _prompt_size(prompt: Any) -> int:
    """Checks ``prompt``; returns a token estimate."""
    if isinstance(prompt, str):
        return len(prompt) // 4 + 1
    if not isinstance(prompt, list) or not prompt:
        raise bad_request(_PROMPT_ERROR, "prompt")
    if all(isinstance(p, str) for p in prompt):
        return sum(len(p) // 4 + 1 for p in prompt)
    if all(type(p) is int and p >= 0 for p in prompt):
        return len(prompt)
    if all(isinstance(p, list) and p and all(type(t) is int and t >= 0 for t in p) for p in prompt):
        return sum(len(p) for p in prompt)
    raise bad_request(_PROMPT_ERROR, "prompt")
