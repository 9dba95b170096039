"""JSON schema (as OpenAI callers write it) -> Gemini's ``Schema``, an OpenAPI 3.0 subset.

Reference: https://ai.google.dev/api/caching#Schema. Gemini refuses every field it does not know
(``additionalProperties``, ``$schema``, ``strict``, ``$ref``, ...) with a 400, and an ``object``
with empty ``properties``. Used for ``responseSchema`` and for function ``parameters``:

- ``type: [T, "null"]`` becomes ``type: T`` with ``nullable: true``; several non-null types an
  ``anyOf``; ``oneOf`` is ``anyOf``; ``const`` a one-value ``enum``.
- ``$ref`` into ``$defs`` / ``definitions`` is inlined (a recursive schema cannot be: 400).
- Keywords Gemini has no field for are left out (they constrain nothing Gemini would check).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.formats.errors import FormatError

_KEPT = frozenset(
    {
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "propertyOrdering",
        "default",
        "minimum",
        "maximum",
    }
)
_MAX_DEPTH = 64


def to_gemini(schema: Mapping[str, Any], param: str) -> dict[str, Any]:
    """``schema`` as a Gemini ``Schema``; ``FormatError`` naming ``param`` if it cannot be one."""
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        found = schema.get(key)
        if isinstance(found, Mapping):
            defs.update({f"#/{key}/{name}": value for name, value in found.items()})
    return _convert(schema, defs, param, ())


def _convert(node: Any, defs: Mapping[str, Any], param: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        raise FormatError(f"'{param}' must be a JSON schema object", param)
    if len(seen) > _MAX_DEPTH:
        raise FormatError(f"'{param}' nests too deeply for Gemini", param)
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            raise FormatError(f"'{param}' is recursive ({ref}); Gemini's schemas cannot be", param)
        if ref not in defs:
            raise FormatError(f"'{param}' refers to {ref!r}, which it does not define", param)
        return _convert(defs[ref], defs, param, (*seen, ref))
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEPT}
    if "const" in node and "enum" not in out:
        out["enum"] = [node["const"]]
    kind = node.get("type")
    if isinstance(kind, list):
        types = [t for t in kind if t != "null"]
        if len(types) < len(kind):
            out["nullable"] = True
        if len(types) == 1:
            kind = types[0]
        elif types:
            out["anyOf"] = [_convert({**node, "type": t}, defs, param, seen) for t in types]
            out.pop("enum", None)
            kind = None
        else:
            kind = None
    if isinstance(kind, str):
        out["type"] = kind
    variants = node.get("anyOf") or node.get("oneOf")
    if isinstance(variants, list):
        plain = [v for v in variants if not (isinstance(v, Mapping) and v.get("type") == "null")]
        if len(plain) < len(variants):
            out["nullable"] = True
        converted = [_convert(v, defs, param, seen) for v in plain]
        if len(converted) == 1:
            out.update(converted[0])
        elif converted:
            out["anyOf"] = converted
    properties = node.get("properties")
    if isinstance(properties, Mapping) and properties:
        out["properties"] = {
            name: _convert(sub, defs, f"{param}.properties.{name}", seen) for name, sub in properties.items()
        }
    else:
        out.pop("required", None)  # Gemini refuses "required" naming properties it was not given
    items = node.get("items")
    if isinstance(items, Mapping):
        out["items"] = _convert(items, defs, f"{param}.items", seen)
    return out
