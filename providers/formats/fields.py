"""Readers of JSON body fields: each returns the typed value or raises ``FormatError`` naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.formats.errors import FormatError


def req_obj(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FormatError(f"'{param}' must be an object", param)
    return value


def req_list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(f"'{param}' must be an array", param)
    return value


def req_str(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"'{param}' must be a string", param)
    return value


def opt_str(value: Any, param: str) -> str | None:
    return None if value is None else req_str(value, param)


def opt_int(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"'{param}' must be an integer", param)
    return value


def opt_num(value: Any, param: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormatError(f"'{param}' must be a number", param)
    return value


def opt_bool(value: Any, param: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise FormatError(f"'{param}' must be a boolean", param)
    return value
