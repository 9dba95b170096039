"""Usage from OpenAI-format SSE events as they pass through, without parsing every chunk.

The raw fast path forwards upstream bytes untouched; this is how it still learns the usage
(limits settle on it, spend prices it) and recognises the usage-only chunk the gateway asked for
on the client's behalf.
"""

from __future__ import annotations

import orjson

from providers.formats.openai_chat import parse_usage
from providers.usage import Usage


class UsageTap:
    """Watches SSE events go by and keeps the last usage seen, without parsing every chunk.

    Only events that contain a non-null ``"usage"`` object are parsed.
    """

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def inspect(self, event: bytes) -> bool:
        """Record usage carried by ``event``; return True if it is a usage-only chunk (no choices)."""
        if b'"usage":{' not in event and b'"usage": {' not in event:
            return False
        payload = event[event.find(b"{") : event.rfind(b"}") + 1]
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict):
            return False
        usage = parse_usage(obj.get("usage"))
        if usage is not None:
            self.usage = usage
        return usage is not None and not obj.get("choices")
