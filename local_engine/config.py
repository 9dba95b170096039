"""Engine configuration: one dataclass the offline ``LLM``, the ``AsyncEngine`` and the server share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a dtype or its common spelling (``"bf16"``, ``"float32"`` ...); ``"auto"``
    computes in bfloat16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() == "auto":
        return torch.bfloat16
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"dtype: unsupported value {dtype!r} (auto or one of {sorted(_DTYPES)})") from None


@dataclass(slots=True)
class EngineConfig:
    """How to run the engine.

    ``model`` is a HF safetensors directory, a ``.gguf`` file, or ``None`` for the bundled SmolLM2 GGUF.
    ``dtype`` ``"auto"`` keeps a GGUF file's quantization where the CPU kernels run it (no widened
    copy of the weights) and computes in bfloat16; a named dtype dequantizes everything to it.
    The KV cache is sized for ``max_num_seqs`` sequences of ``max_model_len`` tokens, capped by
    ``kv_cache_memory_bytes`` (CPU; default 1 GiB) or by free GPU memory times
    ``gpu_memory_utilization`` (CUDA), and never grows past that. On the CPU that size is only
    reserved: memory is committed as blocks are first written.

    ``tensor_parallel_size`` N > 1 splits the model over N ranks, one process each (this one rank 0,
    ``local_engine.distributed``): on the CPU all share its cores; on CUDA rank r uses the r-th GPU
    from ``device``'s. Each rank's KV cache holds its share of the KV heads, sized as above per rank.
    A GGUF file's weights are dequantized (to bfloat16 under ``dtype="auto"``) with N > 1.

    Speculative decoding by prompt lookup (``speculative_decoding``): while at most
    ``speculative_max_batch`` sequences run, a sequence whose last ``prompt_lookup_max`` down to
    ``prompt_lookup_min`` tokens occurred earlier in its prompt + output gets up to
    ``num_speculative_tokens`` of what followed there checked in one forward pass. Greedy outputs
    are the same with or without it, sampled ones have the same distribution; it pays off at small
    batches, where a step costs about the same for a few tokens as for one.
    """

    model: str | Path | None = None
    dtype: str | torch.dtype = "auto"
    # "q8_0": a checkpoint's dense weight matrices (safetensors, or a GGUF file's tensors not kept
    # in their own quantization) are quantized to GGUF Q8_0 as they load and run on the CPU
    # kernels: about half the bytes of bf16. None: they load in ``dtype``. CPU, bfloat16 only.
    quantization: str | None = None
    device: str = "cpu"
    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's max_position_embeddings (capped at 8192)
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.85
    enable_prefix_caching: bool = True
    seed: int = 0
    enforce_eager: bool = False
    num_threads: int | None = None  # CPU: torch intra-op threads; None = all cores
    tensor_parallel_size: int = 1
    warmup: bool = True
    # The completion budget of a chat request naming no max_tokens, unless the model's own
    # generation_config gives one (max_new_tokens); None: up to the context length.
    default_max_tokens: int | None = 512
    speculative_decoding: bool = True
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    speculative_max_batch: int = 2
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        auto = isinstance(self.dtype, str) and self.dtype.lower() == "auto"
        self.dtype = "auto" if auto else resolve_dtype(self.dtype)
        for name in (
            "block_size",
            "max_num_seqs",
            "max_num_batched_tokens",
            "num_speculative_tokens",
            "prompt_lookup_min",
            "prompt_lookup_max",
            "speculative_max_batch",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.prompt_lookup_max < self.prompt_lookup_min:
            raise ValueError(
                f"prompt_lookup_max: must be >= prompt_lookup_min ({self.prompt_lookup_min}), "
                f"got {self.prompt_lookup_max}"
            )
        if not isinstance(self.tensor_parallel_size, int) or self.tensor_parallel_size < 1:
            raise ValueError(
                f"tensor_parallel_size: must be a positive integer, got {self.tensor_parallel_size!r}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len: must be at least 2, got {self.max_model_len!r}")
        if self.default_max_tokens is not None and (
            not isinstance(self.default_max_tokens, int) or self.default_max_tokens < 1
        ):
            raise ValueError(
                f"default_max_tokens: must be a positive integer, got {self.default_max_tokens!r}"
            )
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ValueError(f"kv_cache_memory_bytes: must be positive, got {self.kv_cache_memory_bytes!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization!r}"
            )
        if self.quantization is not None:
            self._check_quantization()

    def _check_quantization(self) -> None:
        self.quantization = str(self.quantization).lower()
        if self.quantization != "q8_0":
            raise ValueError(f"quantization: unsupported value {self.quantization!r} (only q8_0)")
        if self.device != "cpu":
            raise ValueError(f"quantization: q8_0 runs on the CPU only, not on {self.device!r}")
        if self.tensor_parallel_size > 1:  # each rank would need its own slice of whole block rows
            raise ValueError("quantization: q8_0 runs in one process, not with tensor_parallel_size > 1")
        if self.torch_dtype != torch.bfloat16:
            raise ValueError(
                f"quantization: q8_0 computes in bfloat16 (dtype auto or bf16), not {self.dtype}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)

    @property
    def keep_quantized(self) -> bool:
        """Whether a GGUF file's weights stay quantized (``dtype="auto"``)."""
        return self.dtype == "auto"

    def context_length(self, max_position_embeddings: int) -> int:
        """The context the engine serves a model with: ``max_model_len``, else the model's own capped at
        8192 (a longer default would size the KV cache for contexts few requests use)."""
        return self.max_model_len or min(max_position_embeddings, 8192)

    def threads(self) -> int:
        """Intra-op threads for CPU execution: all cores this process may run on, unless set."""
        if self.num_threads:
            return self.num_threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
