"""Azure OpenAI (``azure/<deployment>`` deployments), through the OpenAI-format pass-through."""

from providers.azure.adapter import AzureOpenAIProvider

__all__ = ["AzureOpenAIProvider"]
