"""Ollama's native API (``ollama/<model>`` and ``ollama_chat/<model>`` deployments)."""

from providers.ollama.adapter import OllamaProvider

__all__ = ["OllamaProvider"]
