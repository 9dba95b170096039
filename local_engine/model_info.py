"""What ``/v1/models`` says about a local model: the context it is served with and what the engine
does for it. Read from the model's config alone (``config.json`` or GGUF metadata), so listing
models never loads weights.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

from local_engine.config import EngineConfig
from local_engine.loader import ModelLoadError, resolve_model_path
from local_engine.models.config import ModelConfig, ModelConfigError

# What the engine's OpenAI layer does for every model it serves: the one place to flip when a
# feature lands. tools: function calling (``tools``/``tool_choice``); json: ``response_format``.
CAPABILITIES: dict[str, bool] = {"tools": False, "json": False, "vision": False}


# GGUF value types: fixed-size scalars (struct formats), strings and arrays.
_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_context_length(path: Path) -> int:
    """``{architecture}.context_length`` from a GGUF header, reading key/values only until it is found.

    gguf's ``GGUFReader`` parses every field, the tokenizer's arrays included, before answering: 4 s
    for SmolLM2's 49k tokens on this machine, too slow for a model listing.
    """
    with path.open("rb") as f:

        def value(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) < size:
                raise ModelLoadError(f"{path}: truncated GGUF header")
            return struct.unpack(fmt, data)[0]

        def string() -> str:
            return f.read(value("<Q")).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind in _GGUF_SCALARS:
                f.seek(struct.calcsize(_GGUF_SCALARS[kind]), 1)
            elif kind == _GGUF_STRING:
                f.seek(value("<Q"), 1)
            elif kind == _GGUF_ARRAY:
                item, count = value("<I"), value("<Q")
                if item in _GGUF_SCALARS:
                    f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), 1)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                raise ModelLoadError(f"{path}: unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF" or value("<I") < 2:
            raise ModelLoadError(f"{path} is not a GGUF file (version 2 or later)")
        value("<Q")  # tensor count
        architecture: str | None = None
        lengths: dict[str, int] = {}
        for _ in range(value("<Q")):
            key, kind = string(), value("<I")
            if key == "general.architecture" and kind == _GGUF_STRING:
                architecture = string()
            elif key.endswith(".context_length") and kind in _GGUF_SCALARS:
                lengths[key] = int(value(_GGUF_SCALARS[kind]))
            else:
                skip(kind)
            if architecture is not None and f"{architecture}.context_length" in lengths:
                return lengths[f"{architecture}.context_length"]
    return 2048  # what ModelConfig.from_gguf_metadata assumes without the key


@lru_cache(maxsize=64)
def _declared_context(path: Path) -> int:
    """The model's own context length (``ModelLoadError`` for a missing or bad file)."""
    from local_engine.loader.hf import read_json

    if path.is_dir() and (path / "config.json").is_file():
        try:
            return ModelConfig.from_hf_dict(read_json(path / "config.json")).max_position_embeddings
        except ModelConfigError as exc:
            raise ModelLoadError(f"{path / 'config.json'}: {exc}") from exc
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else [path]
    if len(ggufs) != 1:
        raise ModelLoadError(f"{path} holds no config.json and not exactly one .gguf file")
    try:
        return _gguf_context_length(ggufs[0])
    except OSError as exc:
        raise ModelLoadError(f"{ggufs[0]} is unreadable: {exc}") from exc


def model_card(max_model_len: int | None) -> dict[str, Any]:
    """The fields a model object gains: ``max_model_len`` (when known) and ``capabilities``."""
    card: dict[str, Any] = {"capabilities": dict(CAPABILITIES)}
    if max_model_len is not None:
        card["max_model_len"] = max_model_len
    return card


def describe(config: EngineConfig) -> dict[str, Any]:
    """``model_card`` for ``config`` before its engine runs; without ``max_model_len`` when the
    model's files cannot be read (the listing still answers; a request would say why)."""
    try:
        path, _ = resolve_model_path(config.model)
        return model_card(config.context_length(_declared_context(path)))
    except ModelLoadError:
        return model_card(None)
