"""Rotary position embedding (neox / Hugging Face ``rotate_half`` style) from a cos/sin table.

The table is ``[max_position, rotary_dim]`` with cos in the first half and sin in the second, as
``local_engine.layers.rotary.RotaryEmbedding.cos_sin_cache`` builds it; any scaling (linear,
Llama 3) is already baked into the table, so one kernel serves them all. Rotation is computed in
float32 and rounded once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from local_engine.kernels.dtypes import next_pow2


@triton.jit
def _rotate_heads(
    src_ptr,
    dst_ptr,
    token,
    cos,
    sin,
    stride_src_t,
    stride_src_h,
    stride_dst_t,
    stride_dst_h,
    NUM_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    REST_PAD: tl.constexpr,
):
    heads = tl.arange(0, HEADS_PAD)[:, None]
    idx = tl.arange(0, HALF_PAD)[None, :]
    ok = (heads < NUM_HEADS) & (idx < HALF)
    src = src_ptr + token * stride_src_t + heads * stride_src_h
    dst = dst_ptr + token * stride_dst_t + heads * stride_dst_h
    x1 = tl.load(src + idx, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF + idx, mask=ok, other=0.0).to(tl.float32)
    tl.store(dst + idx, (x1 * cos - x2 * sin).to(dst_ptr.dtype.element_ty), mask=ok)
    tl.store(dst + HALF + idx, (x2 * cos + x1 * sin).to(dst_ptr.dtype.element_ty), mask=ok)
    if REST_PAD > 0:  # partial rotary: the tail of each head passes through
        rest = 2 * HALF + tl.arange(0, REST_PAD)[None, :]
        rest_ok = (heads < NUM_HEADS) & (rest < HEAD_DIM)
        tl.store(dst + rest, tl.load(src + rest, mask=rest_ok), mask=rest_ok)


@triton.jit
def _rotary_kernel(
    out_ptr,
    x_ptr,
    positions_ptr,
    cos_sin_ptr,
    stride_cs,
    stride_x_t,
    stride_x_h,
    stride_o_t,
    stride_o_h,
    NUM_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    REST_PAD: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    idx = tl.arange(0, HALF_PAD)
    row = cos_sin_ptr + pos * stride_cs
    cos = tl.load(row + idx, mask=idx < HALF, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(row + HALF + idx, mask=idx < HALF, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(
        x_ptr, out_ptr, token, cos, sin, stride_x_t, stride_x_h, stride_o_t, stride_o_h,
        NUM_HEADS, HEADS_PAD, HALF, HALF_PAD, HEAD_DIM, REST_PAD,
    )  # fmt: skip


def apply_rotary(
    positions: torch.Tensor, x: torch.Tensor, cos_sin_cache: torch.Tensor, rotary_dim: int | None = None
) -> torch.Tensor:
    """Rotate ``x`` ``[T, heads, head_dim]`` (any token/head strides, last axis contiguous) by each
    token's position; returns a new contiguous tensor, ``x`` is left untouched."""
    num_tokens, num_heads, head_dim = x.shape
    rotary_dim = rotary_dim or head_dim
    if x.stride(-1) != 1 or cos_sin_cache.stride(-1) != 1:
        raise ValueError("apply_rotary needs the head_dim axis contiguous")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if num_tokens == 0:
        return out
    half = rotary_dim // 2
    rest = head_dim - rotary_dim
    _rotary_kernel[(num_tokens,)](
        out,
        x,
        positions,
        cos_sin_cache,
        cos_sin_cache.stride(0),
        x.stride(0),
        x.stride(1),
        out.stride(0),
        out.stride(1),
        NUM_HEADS=num_heads,
        HEADS_PAD=next_pow2(num_heads),
        HALF=half,
        HALF_PAD=next_pow2(half),
        HEAD_DIM=head_dim,
        REST_PAD=next_pow2(rest) if rest else 0,
    )
    return out


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary`` to ``query`` ``[T, Hq, D]`` and ``key`` ``[T, Hk, D]``."""
    return (
        apply_rotary(positions, query, cos_sin_cache, rotary_dim),
        apply_rotary(positions, key, cos_sin_cache, rotary_dim),
    )


def rotary_embedding_ref(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference for ``rotary_embedding`` (float32 math, one rounding)."""
    rotary_dim = rotary_dim or query.shape[-1]
    cos, sin = cos_sin_cache[positions.long()].float().unsqueeze(1).chunk(2, dim=-1)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
        return torch.cat((rotated, rest), dim=-1)

    return rotate(query), rotate(key)
