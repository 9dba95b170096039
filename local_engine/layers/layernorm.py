"""RMSNorm, optionally fused with the residual add that precedes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from local_engine.kernels import cpu as cpu_kernels
from local_engine.kernels.dispatch import use_triton


class RMSNorm(nn.Module):
    """Root-mean-square norm (accumulated in float32, like Hugging Face's Llama).

    ``forward(x)`` returns the normalised ``x``; ``forward(x, residual)`` first adds ``residual`` to
    ``x`` and returns ``(normalised sum, sum)`` so that decoder layers carry the residual stream
    without an extra add per layer.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
        # HF's order: normalise in float32, round to the model dtype, then scale by the weight.
        # Scaling before rounding (one fused call) shifts bf16 logits enough to flip greedy picks.
        return F.rms_norm(x.float(), (self.hidden_size,), None, self.eps).to(x.dtype) * self.weight

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if use_triton(x):  # KERNELS: fused add + norm in one Triton kernel on CUDA (matching numerics)
            from local_engine.kernels.rmsnorm import rms_norm

            return rms_norm(x, self.weight, self.eps, residual)
        if self.weight.dtype == torch.bfloat16 and cpu_kernels.usable(x):  # one C call, same roundings
            return cpu_kernels.rms_norm(x, self.weight, self.eps, residual)
        if residual is None:
            return self._norm(x)
        summed = x + residual
        return self._norm(summed), summed
