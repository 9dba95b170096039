"""Model definitions, their configuration and the architecture registry."""

from local_engine.models.config import ModelConfig

__all__ = ["ModelConfig"]
