"""Anthropic's Messages API as a native adapter (``anthropic/<model>`` deployments)."""

from providers.anthropic.adapter import AnthropicProvider

__all__ = ["AnthropicProvider"]
