"""Matmul against GGUF-quantized weights on the GPU: each weight block is dequantized in registers
inside the loop over K, so the weight is read from memory in its quantized size (Q8_0, Q4_0,
Q4_1: 8.5, 4.5 and 5 bits per value against bf16's 16).

The weight is the GGUF tensor's bytes as stored (uint8 ``[n, row bytes]``, one row of 32-value
blocks per output feature: an fp16 scale ``d``, for Q4_1 an fp16 offset ``m``, then the quants;
Q4_x packs value ``j`` in the low nibble of byte ``j`` and value ``j + 16`` in its high nibble).
Activations stay in their own dtype and accumulate in fp32 (``tl.dot``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# GGML type id -> bytes per 32-value block
BLOCK_BYTES = {2: 18, 3: 20, 8: 34}  # Q4_0, Q4_1, Q8_0


@triton.jit
def _half(ptr, offs):
    """The fp16 at byte offsets ``offs`` (little-endian), as fp32."""
    lo = tl.load(ptr + offs).to(tl.uint16)
    hi = tl.load(ptr + offs + 1).to(tl.uint16)
    return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _quant_matmul_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    groups,
    stride_x,
    stride_y,
    row_bytes,
    QTYPE: tl.constexpr,
    BB: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    rows = tl.where(n_ok, offs_n, 0).to(tl.int64) * row_bytes  # a valid row for masked features
    v = tl.arange(0, 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(groups):
        block = rows + g * BB  # [BLOCK_N] byte offset of each feature's block g
        d = _half(w_ptr, block)
        if QTYPE == 8:  # Q8_0: int8 quants after d
            q = tl.load(w_ptr + block[:, None] + 2 + v[None, :]).to(tl.int8, bitcast=True).to(tl.float32)
            w = q * d[:, None]
        else:
            start = 4 if QTYPE == 3 else 2
            byte = tl.load(w_ptr + block[:, None] + start + (v[None, :] % 16))
            q = ((byte >> (4 * (v[None, :] // 16)).to(tl.uint8)) & 0xF).to(tl.float32)
            if QTYPE == 3:  # Q4_1: d * q + m
                w = q * d[:, None] + _half(w_ptr, block + 2)[:, None]
            else:  # Q4_0: d * (q - 8)
                w = (q - 8.0) * d[:, None]
        x = tl.load(x_ptr + offs_m[:, None] * stride_x + g * 32 + v[None, :], mask=m_ok[:, None], other=0.0)
        acc += tl.dot(x.to(tl.float32), tl.trans(w))
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + offs_m[:, None] * stride_y + offs_n[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def quant_matmul(
    x: torch.Tensor, weight: torch.Tensor, qtype: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` the GGUF blocks ``weight`` (uint8 ``[n, row bytes]``) of GGML
    type ``qtype`` (Q4_0 = 2, Q4_1 = 3, Q8_0 = 8); ``x [..., k]``, the result in ``x``'s dtype."""
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"GGML type {qtype} is not supported here (Q4_0, Q4_1, Q8_0)")
    k = x.shape[-1]
    n = weight.shape[0]
    if k % 32 or weight.dtype != torch.uint8 or weight.shape[1] != k // 32 * BLOCK_BYTES[qtype]:
        raise ValueError(f"weight {weight.dtype} {tuple(weight.shape)} does not hold rows of {k} values")
    if not weight.is_contiguous():
        raise ValueError("the quantized weight must be contiguous")
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 32
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, 64))
    if m and n:
        _quant_matmul_kernel[grid](
            x2,
            weight,
            bias if bias is not None else y,
            y,
            m,
            n,
            k // 32,
            x2.stride(0),
            y.stride(0),
            weight.shape[1],
            QTYPE=qtype,
            BB=BLOCK_BYTES[qtype],
            HAS_BIAS=bias is not None,
            BLOCK_M=block_m,
            BLOCK_N=64,
        )
    return y.view(*x.shape[:-1], n)
