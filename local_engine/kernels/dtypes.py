"""Mapping torch dtypes to the dtype a kernel computes matrix products in."""

from __future__ import annotations

import torch
import triton.language as tl

from local_engine.kernels import interpreting


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """The element type ``tl.dot`` operands are cast to for cache/activation dtype ``dtype``.

    On a GPU bf16/fp16 operands go straight to the tensor cores. Triton's CPU interpreter computes
    with numpy, which has no bfloat16 arithmetic (bf16 values come out as garbage), so there every
    operand is widened to float32 first.
    """
    if interpreting() or dtype == torch.float32:
        return tl.float32
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (Triton block shapes must be powers of two)."""
    return 1 << max(0, (n - 1).bit_length())
