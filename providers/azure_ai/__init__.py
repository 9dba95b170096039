"""Azure AI model inference (``azure_ai/<model>`` deployments), through the OpenAI-format pass-through."""

from providers.azure_ai.adapter import AzureAIProvider

__all__ = ["AzureAIProvider"]
