"""What ``/v1/models`` says about a local model: the context it is served with and what the engine
does for it. Read from the model's files alone (``config.json`` and the tokenizer config, or the
GGUF header), so listing models never loads weights.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from local_engine.config import EngineConfig
from local_engine.loader import ModelLoadError, resolve_model_path
from local_engine.models.config import ModelConfig, ModelConfigError
from local_engine.tools import ToolsUnsupported, tool_format

# What the engine does for every model it serves; ``tools`` is per model (its chat template).
JSON_OUTPUT = True  # response_format / guided_* by constrained decoding (local_engine/structured)
VISION = False  # no model family here reads images

ChatTemplate = str | dict[str, str] | None


def supports_tools(chat_template: ChatTemplate) -> bool:
    """Whether requests with ``tools`` work with this chat template (else they are a 400)."""
    if isinstance(chat_template, dict):  # named templates: the one tool_plan renders with
        chat_template = chat_template.get("tool_use") or chat_template.get("default")
    try:
        tool_format(chat_template)
    except ToolsUnsupported:
        return False
    return True


def model_card(max_model_len: int | None, chat_template: ChatTemplate) -> dict[str, Any]:
    """The fields a model object gains: ``max_model_len`` (when known) and ``capabilities``."""
    capabilities = {"tools": supports_tools(chat_template), "json": JSON_OUTPUT, "vision": VISION}
    card: dict[str, Any] = {"capabilities": capabilities}
    if max_model_len is not None:
        card["max_model_len"] = max_model_len
    return card


@dataclass(frozen=True, slots=True)
class _Declared:
    context_length: int
    chat_template: ChatTemplate


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
_GGUF_TEMPLATE = "tokenizer.chat_template"


def _gguf_declared(path: Path) -> _Declared:
    """``{architecture}.context_length`` and the chat template from a GGUF header, skipping the rest.

    gguf's ``GGUFReader`` decodes every field, the tokenizer's arrays included: 4 s for SmolLM2's
    49k tokens on this machine, too slow for a model listing.
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
        template: str | None = None
        lengths: dict[str, int] = {}
        for _ in range(value("<Q")):
            key, kind = string(), value("<I")
            if key == "general.architecture" and kind == _GGUF_STRING:
                architecture = string()
            elif key == _GGUF_TEMPLATE and kind == _GGUF_STRING:
                template = string()
            elif key.endswith(".context_length") and kind in _GGUF_SCALARS:
                lengths[key] = int(value(_GGUF_SCALARS[kind]))
            else:
                skip(kind)
    # 2048: what ModelConfig.from_gguf_metadata assumes without the key.
    return _Declared(lengths.get(f"{architecture}.context_length", 2048), template)


@lru_cache(maxsize=64)
def _declared(path: Path) -> _Declared:
    """What the model's files say (``ModelLoadError`` for a missing or bad file)."""
    from local_engine.loader.hf import _chat_template, read_json

    if path.is_dir() and (path / "config.json").is_file():
        try:
            config = ModelConfig.from_hf_dict(read_json(path / "config.json"))
        except ModelConfigError as exc:
            raise ModelLoadError(f"{path / 'config.json'}: {exc}") from exc
        tokenizer_config = read_json(path / "tokenizer_config.json", required=False)
        return _Declared(config.max_position_embeddings, _chat_template(path, tokenizer_config))
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else [path]
    if len(ggufs) != 1:
        raise ModelLoadError(f"{path} holds no config.json and not exactly one .gguf file")
    try:
        return _gguf_declared(ggufs[0])
    except OSError as exc:
        raise ModelLoadError(f"{ggufs[0]} is unreadable: {exc}") from exc


def describe(config: EngineConfig) -> dict[str, Any]:
    """``model_card`` for ``config`` before its engine runs; an unreadable model gets no
    ``max_model_len`` and no tools (the listing still answers; a request would say why)."""
    try:
        path, _ = resolve_model_path(config.model)
        declared = _declared(path)
    except ModelLoadError:
        return model_card(None, None)
    return model_card(config.context_length(declared.context_length), declared.chat_template)
