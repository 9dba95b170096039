"""The adapter for every upstream that speaks OpenAI's chat-completions API."""

from providers.openai_compat.adapter import OpenAICompatProvider

__all__ = ["OpenAICompatProvider"]
