"""RMSNorm, optionally fused with the residual add before it (one pass over the row).

Numerics follow ``local_engine.layers.layernorm.RMSNorm``: the residual sum is rounded to the
activation dtype (the stream the next layer carries), the norm is computed in float32, rounded to
the activation dtype, then scaled by the weight.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from local_engine.kernels.dtypes import next_pow2


@triton.jit
def _rms_norm_kernel(
    out_ptr,
    sum_ptr,
    x_ptr,
    residual_ptr,
    weight_ptr,
    stride_x,
    stride_r,
    stride_o,
    stride_s,
    hidden,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_s + cols, x, mask=ok)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / hidden + eps)
    normed = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``rms_norm(x)`` or, with ``residual``, ``(rms_norm(x + residual), x + residual)``.

    ``x`` and ``residual`` are ``[..., hidden]`` with the last axis contiguous.
    """
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    out = torch.empty_like(x2)
    summed = torch.empty_like(x2) if residual is not None else out
    r2 = residual.reshape(-1, hidden) if residual is not None else x2
    if r2.stride(-1) != 1:
        r2 = r2.contiguous()
    if rows:
        _rms_norm_kernel[(rows,)](
            out,
            summed,
            x2,
            r2,
            weight,
            x2.stride(0),
            r2.stride(0),
            out.stride(0),
            summed.stride(0),
            hidden,
            eps,
            HAS_RESIDUAL=residual is not None,
            BLOCK=next_pow2(hidden),
        )
    if residual is None:
        return out.view(x.shape)
    return out.view(x.shape), summed.view(x.shape)


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The torch reference for ``rms_norm``."""
    summed = x + residual if residual is not None else x
    xf = summed.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    out = (normed.float() * weight.float()).to(x.dtype)
    return out if residual is None else (out, summed)
