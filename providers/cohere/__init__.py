"""The native Cohere adapter (Chat API v2, plain and streamed; Embed API v2)."""

from providers.cohere.adapter import CohereProvider

__all__ = ["CohereProvider"]
