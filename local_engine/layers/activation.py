"""Gated activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from local_engine.kernels.dispatch import use_triton


class SiluAndMul(nn.Module):
    """``silu(x[..., :d]) * x[..., d:]`` for the fused gate/up projection output ``[..., 2d]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_triton(x):  # KERNELS: one Triton pass on CUDA
            from local_engine.kernels.activation import silu_and_mul

            return silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)  # in place: one allocation fewer per layer
