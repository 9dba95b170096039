"""The engine's OpenAI-compatible HTTP server; ``main(argv)`` backs ``switchyard engine ...``."""

from local_engine.server.cli import main

__all__ = ["main"]
