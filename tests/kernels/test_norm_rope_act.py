"""Fused RMSNorm(+residual), rotary embedding and SiLU-and-mul against torch references and the
engine's own torch layers."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from local_engine.kernels.activation import silu_and_mul, silu_and_mul_ref
from local_engine.kernels.rmsnorm import rms_norm, rms_norm_ref
from local_engine.kernels.rotary import rotary_embedding, rotary_embedding_ref
from local_engine.layers.activation import SiluAndMul
from local_engine.layers.layernorm import RMSNorm
from local_engine.layers.rotary import get_rope

_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", [64, 96])
def test_rms_norm_with_and_without_residual(device: str, dtype: torch.dtype, hidden: int) -> None:
    x = torch.randn(5, hidden, dtype=dtype, device=device)
    residual = torch.randn_like(x)
    weight = (torch.rand(hidden, device=device) + 0.5).to(dtype)
    tol = _TOL[dtype]
    out = rms_norm(x, weight, 1e-6)
    torch.testing.assert_close(out, rms_norm_ref(x, weight, 1e-6), atol=tol, rtol=tol)
    out, summed = rms_norm(x, weight, 1e-6, residual)
    ref_out, ref_sum = rms_norm_ref(x, weight, 1e-6, residual)
    torch.testing.assert_close(summed, ref_sum, atol=tol, rtol=tol)
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
    # And against the layer the model uses on CPU.
    layer = RMSNorm(hidden, eps=1e-6).to(device=device, dtype=dtype)
    layer.weight.data.copy_(weight)
    layer_out, layer_sum = layer(x, residual)
    torch.testing.assert_close(out, layer_out, atol=tol, rtol=tol)
    torch.testing.assert_close(summed, layer_sum, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("scaling", "rotary_dim"), [(None, 32), (LLAMA3_SCALING, 32), ({"type": "linear", "factor": 2.0}, 16)]
)
def test_rotary_from_layer_cache(
    device: str, dtype: torch.dtype, scaling: dict | None, rotary_dim: int
) -> None:
    head_dim, num_q, num_k, tokens = 32, 4, 2, 6
    rope = get_rope(head_dim, 20000, 500000.0, scaling, rotary_dim=rotary_dim).to(device)
    # Positions far out, where Llama 3 scaling changes the low frequencies.
    positions = torch.tensor([0, 1, 15, 16, 9000, 19999], device=device)
    qkv = torch.randn(tokens, num_q + 2 * num_k, head_dim, dtype=dtype, device=device)
    query, key = qkv[:, :num_q], qkv[:, num_q : num_q + num_k]  # strided views, like the layer's
    q_out, k_out = rotary_embedding(positions, query, key, rope.cos_sin_cache, rotary_dim)
    q_ref, k_ref = rotary_embedding_ref(positions, query, key, rope.cos_sin_cache, rotary_dim)
    tol = _TOL[dtype]
    torch.testing.assert_close(q_out, q_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(k_out, k_ref, atol=tol, rtol=tol)
    # The layer's torch path rounds cos/sin to the activation dtype first: equal up to that rounding.
    q_layer, k_layer = rope(positions, query, key)
    loose = 4 * tol if dtype != torch.float32 else 1e-4
    torch.testing.assert_close(q_out, q_layer, atol=loose, rtol=loose)
    torch.testing.assert_close(k_out, k_layer, atol=loose, rtol=loose)


def test_llama3_scaling_reaches_the_kernel(device: str) -> None:
    """The scaled table changes results at long positions, so the kernel is not ignoring it."""
    plain = get_rope(32, 20000, 500000.0, None).to(device)
    scaled = get_rope(32, 20000, 500000.0, LLAMA3_SCALING).to(device)
    positions = torch.tensor([19000], device=device)
    q = torch.randn(1, 2, 32, device=device)
    a, _ = rotary_embedding(positions, q, q, plain.cos_sin_cache)
    b, _ = rotary_embedding(positions, q, q, scaled.cos_sin_cache)
    assert (a - b).abs().max().item() > 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_and_mul(device: str, dtype: torch.dtype) -> None:
    x = torch.randn(3, 2, 2 * 80, dtype=dtype, device=device)
    out = silu_and_mul(x, block=32)  # several column blocks, the last one partial
    tol = _TOL[dtype]
    torch.testing.assert_close(out, silu_and_mul_ref(x), atol=tol, rtol=tol)
    torch.testing.assert_close(out, SiluAndMul()(x), atol=2 * tol, rtol=2 * tol)
