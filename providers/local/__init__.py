"""The ``local/<name>`` provider: Switchyard's own engine, in-process (imports torch; loaded lazily)."""

from providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
