"""Rotary position embedding (neox style, as Hugging Face Llama), with the common rope scalings.

Supported ``rope_scaling`` types: none/``default``, ``linear``, ``llama3`` and ``longrope`` (Phi-3).
The cos/sin table is precomputed in float32 for every position up to ``max_position``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from local_engine.kernels.dispatch import use_triton


class UnsupportedRopeScaling(ValueError):
    """The model asks for a rope scaling this engine does not implement."""


def _default_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling: long wavelengths divided by ``factor``, short kept."""
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
    high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _longrope_freqs(
    rotary_dim: int, base: float, max_position: int, scaling: dict[str, Any]
) -> tuple[torch.Tensor, float]:
    """LongRoPE's per-position angles ``[max_position, rotary_dim / 2]`` and its cos/sin scale.

    Positions inside the original context rotate with ``short_factor``, those past it with
    ``long_factor``. Transformers switches a whole sequence to the long factors once it crosses the
    original length (re-rotating every key); a KV cache keeps the keys it has, so the switch is per
    position here, and the two agree on every sequence within the original context.
    """
    original = int(scaling["original_max_position_embeddings"])
    factor = scaling.get("factor") or int(scaling.get("max_position_embeddings", max_position)) / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = {
        kind: 1.0 / (torch.tensor(scaling[f"{kind}_factor"], dtype=torch.float32) * base**exponents)
        for kind in ("short", "long")
    }
    t = torch.arange(max_position, dtype=torch.float32)
    per_position = torch.where((t >= original).unsqueeze(1), inv_freq["long"], inv_freq["short"])
    return t.unsqueeze(1) * per_position, float(attention_factor)


def rope_type(scaling: dict[str, Any] | None) -> str:
    """The scaling's type name, accepting both ``rope_type`` and the older ``type`` key."""
    if not scaling:
        return "default"
    return str(scaling.get("rope_type") or scaling.get("type") or "default")


class RotaryEmbedding(nn.Module):
    """Applies RoPE to ``[T, heads, head_dim]`` tensors given each token's position."""

    def __init__(
        self,
        head_dim: int,
        rotary_dim: int,
        max_position: int,
        base: float,
        rope_scaling: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        kind = rope_type(rope_scaling)
        inv_freq = _default_inv_freq(rotary_dim, base)
        scale = 1.0
        if kind == "linear":
            inv_freq = inv_freq / float(rope_scaling["factor"])  # type: ignore[index]
        elif kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, rope_scaling)  # type: ignore[arg-type]
        elif kind not in ("default", "longrope"):
            raise UnsupportedRopeScaling(
                f"rope scaling type {kind!r} is not supported (default, linear, llama3, longrope)"
            )
        if kind == "longrope":
            freqs, scale = _longrope_freqs(rotary_dim, base, max_position, rope_scaling)  # type: ignore[arg-type]
        else:
            freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        # [max_position, rotary_dim]: cos in the first half, sin in the second.
        table = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
        if scale != 1.0:
            table = table * scale
        self.register_buffer("cos_sin_cache", table, persistent=False)
        self._typed_cache: torch.Tensor | None = None
        # This forward pass's (positions, dtype) -> (cos, sin) pair: every layer shares it.
        self._step_key: tuple[torch.Tensor, torch.dtype] | None = None
        self._step_cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None

    def table(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The ``[max_position, rotary_dim]`` cos | sin table in ``dtype`` on ``device`` (cached)."""
        cached = self._typed_cache
        if cached is None or cached.dtype != dtype or cached.device != device:
            # HF casts cos/sin to the activation dtype before rotating; caching the cast saves an op.
            cached = self.cos_sin_cache.to(device=device, dtype=dtype)
            self._typed_cache = cached
        return cached

    def _step_factors(
        self, positions: torch.Tensor, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[T, 1, rotary_dim]`` cos and signed sin for ``positions``, reused by every layer of one
        forward pass (same tensor object, until ``begin_step``)."""
        key = self._step_key
        if (
            device.type == "cpu"  # elsewhere a CUDA graph capture must see the gather every time
            and key is not None
            and key[0] is positions
            and key[1] == dtype
            and self._step_cos_sin is not None
        ):
            return self._step_cos_sin
        cos, sin = self.table(dtype, device)[positions].unsqueeze(1).chunk(2, dim=-1)
        factors = (torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1))
        self._step_key, self._step_cos_sin = (positions, dtype), factors
        return factors

    def begin_step(self) -> None:
        """Forget the previous forward pass's factors (its positions may be refilled in place)."""
        self._step_key = self._step_cos_sin = None

    def apply(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` ``[T, heads, head_dim]`` (any strides); returns a new tensor."""
        if x.stride(-1) == 1 and use_triton(x):  # KERNELS: Triton on CUDA, from the float32 table
            from local_engine.kernels.rotary import apply_rotary

            return apply_rotary(positions, x, self.cos_sin_cache, self.rotary_dim)
        if self.rotary_dim == self.head_dim:
            # x * [cos, cos] + [x2, x1] * [-sin, sin]: four ops per call, with the per-position
            # factors built once per step (same roundings as HF's q * cos + rotate_half(q) * sin).
            cos2, sin2 = self._step_factors(positions, x.dtype, x.device)
            half = self.rotary_dim // 2
            out = x * cos2
            swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
            return out.add_(swapped.mul_(sin2))
        cos_sin = self.table(x.dtype, x.device)[positions].unsqueeze(1)
        cos, sin = cos_sin.chunk(2, dim=-1)
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        x1, x2 = rot.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(positions, query), self.apply(positions, key)


def get_rope(
    head_dim: int,
    max_position: int,
    base: float,
    rope_scaling: dict[str, Any] | None = None,
    rotary_dim: int | None = None,
) -> RotaryEmbedding:
    """A rotary embedding for these settings."""
    return RotaryEmbedding(head_dim, rotary_dim or head_dim, max_position, base, rope_scaling)
