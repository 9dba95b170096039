"""The native Gemini API adapter (Google AI Studio: generateContent, streamed, batchEmbedContents)."""

from providers.gemini.adapter import GeminiProvider

__all__ = ["GeminiProvider"]
