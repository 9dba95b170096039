"""Package attributes imported on first use (PEP 562).

``gateway.config`` imports the settings modules of ``gateway.cache`` and ``gateway.limits``;
their packages must not import redis (or anything heavy) until a name that needs it is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``homes`` maps each exported name to its submodule."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        sys.modules[package].__dict__[name] = value  # later lookups skip this function
        return value

    return __getattr__
