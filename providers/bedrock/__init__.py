"""The adapter for AWS Bedrock (Converse, ConverseStream, InvokeModel embeddings)."""

from providers.bedrock.adapter import BedrockProvider

__all__ = ["BedrockProvider"]
