"""Reading a Hugging Face model directory: config, safetensors shards, tokenizer, generation config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tokenizers
import torch
from safetensors import safe_open

from local_engine.loader.errors import ModelLoadError
from local_engine.tokenizer import Tokenizer, token_content

SAFETENSORS_INDEX = "model.safetensors.index.json"


def read_json(path: Path, required: bool = True) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when optional and absent; ``ModelLoadError`` naming the file."""
    if not path.is_file():
        if required:
            raise ModelLoadError(f"{path} is missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return data


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint shards, from the index when there is one."""
    index_path = model_dir / SAFETENSORS_INDEX
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index_path} has no weight_map")
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"{f} is listed in {index_path} but missing")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir} holds no *.safetensors weights")
    return files


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor in the shards, one at a time (memory-mapped)."""
    for f in files:
        try:
            handle = safe_open(str(f), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ModelLoadError(f"{f} is not a readable safetensors file: {exc}") from exc
        with handle:
            for name in handle.keys():
                try:
                    tensor = handle.get_tensor(name)
                except Exception as exc:
                    raise ModelLoadError(f"{f}: tensor {name!r} is unreadable: {exc}") from exc
                yield name, tensor


def _chat_template(model_dir: Path, tok_cfg: dict[str, Any]) -> str | dict[str, str] | None:
    # transformers >= 4.43 may save the template beside the config instead of inside it.
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    separate = read_json(model_dir / "chat_template.json", required=False).get("chat_template")
    template = tok_cfg.get("chat_template") or separate
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        return {item["name"]: item["template"] for item in template}
    return template


def load_tokenizer(model_dir: Path, generation_config: dict[str, Any]) -> Tokenizer:
    """The tokenizer of a HF model directory (``tokenizer.json`` is required)."""
    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelLoadError(f"{tok_path} is missing (only fast-tokenizer directories are supported)")
    try:
        backend = tokenizers.Tokenizer.from_file(str(tok_path))
    except Exception as exc:
        raise ModelLoadError(f"{tok_path} is not a valid tokenizers file: {exc}") from exc
    tok_cfg = read_json(model_dir / "tokenizer_config.json", required=False)
    specials = {
        key: token_content(tok_cfg.get(key)) for key in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    eos_ids: list[int] = []
    gen_eos = generation_config.get("eos_token_id")
    for token_id in [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []):
        if token_id not in eos_ids:
            eos_ids.append(int(token_id))
    if specials["eos_token"]:
        tid = backend.token_to_id(specials["eos_token"])
        if tid is not None and tid not in eos_ids:
            eos_ids.append(tid)
    return Tokenizer(
        backend=backend,
        chat_template=_chat_template(model_dir, tok_cfg),
        bos_token=specials["bos_token"],
        eos_token=specials["eos_token"],
        unk_token=specials["unk_token"],
        pad_token=specials["pad_token"],
        eos_token_ids=tuple(eos_ids),
    )
