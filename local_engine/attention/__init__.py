"""Paged attention: the metadata shared by the scheduler and the kernels, and the backends."""

from local_engine.attention.metadata import AttentionBackend, AttentionMetadata

__all__ = ["AttentionBackend", "AttentionMetadata"]
