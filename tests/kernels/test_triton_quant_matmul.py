"""The Triton dequantize-in-the-loop matmul (local_engine/kernels/quant_matmul.py) against
gguf-py's dequantize-then-matmul; on CPU tensors under Triton's interpreter unless a GPU is here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.kernels.test_quant_matmul import quantized_weight

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize  # noqa: E402


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("rows", [1, 5, 20])
def test_quant_matmul_matches_dequantize_then_matmul(device: str, qtype: Q, rows: int) -> None:
    from local_engine.kernels.quant_matmul import quant_matmul

    n, k = 72, 128  # 72: a partial tile of features
    raw = quantized_weight(qtype, n, k, seed=rows)
    w = torch.from_numpy(dequantize(raw, qtype).reshape(n, k).astype(np.float32))
    x = torch.randn(rows, k)
    bias = torch.randn(n)
    got = quant_matmul(x.to(device), torch.from_numpy(raw).to(device), int(qtype), bias.to(device)).cpu()
    want = x @ w.T + bias
    # fp32 products of the exact dequantized values; tl.dot may use TF32 on a GPU
    tol = 2e-2 if device == "cuda" else 1e-4
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


def test_quant_matmul_refuses_what_it_cannot_read(device: str) -> None:
    from local_engine.kernels.quant_matmul import quant_matmul

    raw = torch.from_numpy(quantized_weight(Q.Q8_0, 16, 64)).to(device)
    with pytest.raises(ValueError, match="not supported"):
        quant_matmul(torch.randn(2, 64, device=device), raw, int(Q.Q6_K))
    with pytest.raises(ValueError, match="does not hold"):
        quant_matmul(torch.randn(2, 96, device=device), raw, int(Q.Q8_0))
