"""The loader's one exception type."""

from __future__ import annotations


class ModelLoadError(Exception):
    """A model could not be loaded; the message names the file or setting at fault."""
