"""The native Vertex AI adapter for Google's models (generateContent at Vertex URLs, OAuth; predict
for text embeddings)."""

from providers.vertex_ai.adapter import VertexAIProvider

__all__ = ["VertexAIProvider"]
