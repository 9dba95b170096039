"""Token usage of one upstream call, as every layer counts it (limits settle on it, spend prices it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    """Tokens one call consumed.

    ``prompt_tokens`` counts every input token, cached ones included (OpenAI's convention);
    ``cache_read_tokens`` and ``cache_write_tokens`` say how many of them were read from or
    written to a provider's prompt cache (Anthropic reports these separately; they are priced
    differently), so a translator never has to guess.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
