"""Loading a model for the engine: a Hugging Face directory, a GGUF file, or the default SmolLM2.

``load_model(path | None, dtype=..., device=...) -> LoadedModel``. Everything is offline; any bad
or missing file raises ``ModelLoadError`` naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from local_engine.layers.linear import pack_cpu_weights
from local_engine.loader.errors import ModelLoadError
from local_engine.loader.quantize import quantize_on_load
from local_engine.models.config import ModelConfig, ModelConfigError
from local_engine.models.default import DEFAULT_MODEL_NAME, DefaultModelMissing, default_model_path
from local_engine.models.registry import UnsupportedArchitecture, get_model_class
from local_engine.tokenizer import Tokenizer

__all__ = ["LoadedModel", "ModelLoadError", "load_model", "resolve_model_path"]


@dataclass
class LoadedModel:
    """A ready-to-run model with its tokenizer and configuration."""

    model: nn.Module
    tokenizer: Tokenizer
    config: ModelConfig
    generation_config: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    tp_size: int = 1  # the model holds one of this many tensor-parallel shards


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def resolve_model_path(path: str | Path | None) -> tuple[Path, str]:
    """``(file or directory, model name)``; ``None`` means the default SmolLM2 GGUF."""
    if path is None:
        try:
            return default_model_path(), DEFAULT_MODEL_NAME
        except DefaultModelMissing as exc:
            raise ModelLoadError(str(exc)) from exc
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise ModelLoadError(f"model path {resolved} does not exist")
    name = resolved.stem if resolved.is_file() else resolved.name
    return resolved, name


def _merge_eos(*groups: Iterable[int]) -> tuple[int, ...]:
    merged: list[int] = []
    for group in groups:
        for token_id in group:
            if token_id not in merged:
                merged.append(int(token_id))
    return tuple(merged)


def _build_model(
    config: ModelConfig,
    weights: Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype,
    device: str | torch.device,
    quantization: str | None = None,
    shard: tuple[int, int] = (0, 1),
) -> nn.Module:
    cls = get_model_class(config.architecture)
    with _default_dtype(dtype), torch.device(device):
        model = cls(config, tp_rank=shard[0], tp_size=shard[1])
    if quantization is not None:
        _check_quantization(quantization, dtype, device)
        quantize_on_load(model, quantization)
    model.load_weights(weights)  # type: ignore[operator]
    if torch.device(device).type == "cpu":
        pack_cpu_weights(model)  # oneDNN layouts for bf16 matmuls (a no-op for other dtypes)
    model.eval()
    model.requires_grad_(False)
    return model


def _quant_types(quantized: bool, dtype: torch.dtype, device: str | torch.device) -> frozenset[int]:
    """The GGML types a GGUF file's weights may stay in: those the CPU kernels run, when asked
    for, on the CPU, with bf16 activations and a built kernel library; otherwise none."""
    from local_engine.kernels import cpu as cpu_kernels

    usable = (
        quantized
        and torch.device(device).type == "cpu"
        and dtype == torch.bfloat16
        and cpu_kernels._library() is not None
    )
    return frozenset(cpu_kernels.QUANT_TYPES.values()) if usable else frozenset()


def _check_quantization(quantization: str, dtype: torch.dtype, device: str | torch.device) -> None:
    """Quantizing on load needs what running the blocks needs: the CPU, bf16, the kernel library."""
    from local_engine.kernels import cpu as cpu_kernels

    if torch.device(device).type != "cpu" or dtype != torch.bfloat16:
        raise ModelLoadError(f"quantization {quantization} runs on the CPU in bfloat16, not {device} {dtype}")
    if cpu_kernels._library() is None:
        raise ModelLoadError(
            f"quantization {quantization} needs the CPU kernel library, which did not build (see the log)"
        )


def _load_gguf(
    path: Path,
    name: str,
    dtype: torch.dtype,
    device: str | torch.device,
    quantized: bool = False,
    quantization: str | None = None,
    shard: tuple[int, int] = (0, 1),
) -> LoadedModel:
    from local_engine.generation_defaults import gguf_sampling
    from local_engine.loader.gguf import GGUFFile, build_tokenizer

    gguf_file = GGUFFile(path)
    config = ModelConfig.from_gguf_metadata(gguf_file.metadata, gguf_file.tensor_names, name=name)
    tokenizer = build_tokenizer(gguf_file)
    config.eos_token_ids = _merge_eos(config.eos_token_ids, tokenizer.eos_token_ids)
    tensors = gguf_file.iter_tensors(
        config.num_attention_heads, config.num_key_value_heads, _quant_types(quantized, dtype, device)
    )
    model = _build_model(config, tensors, dtype, device, quantization, shard)
    # The file's recommended sampling (llama.cpp's general.sampling.* keys), named as HF names it.
    generation_config: dict[str, Any] = gguf_sampling(path, gguf_file.metadata)
    generation_config["eos_token_id"] = list(config.eos_token_ids)
    if config.bos_token_id is not None:
        generation_config["bos_token_id"] = config.bos_token_id
    return LoadedModel(model, tokenizer, config, generation_config, path, shard[1])


def _load_hf_dir(
    model_dir: Path,
    name: str,
    dtype: torch.dtype,
    device: str | torch.device,
    quantization: str | None = None,
    shard: tuple[int, int] = (0, 1),
) -> LoadedModel:
    from local_engine.loader.hf import iter_safetensors, load_tokenizer, read_json, safetensors_files

    cfg_path = model_dir / "config.json"
    try:
        config = ModelConfig.from_hf_dict(read_json(cfg_path), name=name)
    except ModelConfigError as exc:
        raise ModelLoadError(f"{cfg_path}: {exc}") from exc
    generation_config = read_json(model_dir / "generation_config.json", required=False)
    tokenizer = load_tokenizer(model_dir, generation_config)
    gen_eos = generation_config.get("eos_token_id")
    gen_eos_ids = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    config.eos_token_ids = _merge_eos(gen_eos_ids, config.eos_token_ids, tokenizer.eos_token_ids)
    tokenizer.eos_token_ids = config.eos_token_ids
    weights = iter_safetensors(safetensors_files(model_dir))
    model = _build_model(config, weights, dtype, device, quantization, shard)
    return LoadedModel(model, tokenizer, config, generation_config, model_dir, shard[1])


def load_model(
    path: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    quantized: bool = False,
    quantization: str | None = None,
    tp_rank: int = 0,
    tp_size: int = 1,
) -> LoadedModel:
    """Load a HF model directory, a ``.gguf`` file (or a directory holding exactly one), or the default.

    ``quantized``: a GGUF file's weight matrices stay in the file's quantization where the CPU
    kernels run it (bf16 activations on the CPU); everything else is dequantized to ``dtype``.
    ``quantization`` ``"q8_0"``: the weight matrices that would load dense are quantized to Q8_0
    blocks instead (``loader.quantize``; CPU and bf16 only).
    ``tp_rank`` / ``tp_size``: build only that tensor-parallel rank's shard of the model (each
    layer slices its part from the full checkpoint tensors); a GGUF file's weights are then
    dequantized, since a quantized block row cannot be split along its input dimension."""
    resolved, name = resolve_model_path(path)
    shard = (tp_rank, tp_size)
    quantized = quantized and tp_size == 1
    try:
        if resolved.is_file():
            if resolved.suffix.lower() != ".gguf":
                raise ModelLoadError(f"{resolved} is neither a .gguf file nor a model directory")
            return _load_gguf(resolved, name, dtype, device, quantized, quantization, shard)
        if (resolved / "config.json").is_file():
            return _load_hf_dir(resolved, name, dtype, device, quantization, shard)
        ggufs = sorted(resolved.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], name, dtype, device, quantized, quantization, shard)
        if ggufs:
            raise ModelLoadError(f"{resolved} holds several .gguf files; pass the one to load")
        raise ModelLoadError(f"{resolved / 'config.json'} is missing (and {resolved} holds no .gguf file)")
    except ModelLoadError:
        raise
    except (ModelConfigError, UnsupportedArchitecture, ValueError) as exc:
        raise ModelLoadError(f"{resolved}: {exc}") from exc
