"""The CPU matmul on GGUF-quantized weights (local_engine/kernels/cpu/quant.c) against gguf-py's
own dequantize-then-matmul.

Two references per format:
- exact: gguf's dequantized weight against the activation quantized as the kernel does (q8 per
  32 values, d = max|x| / 127): only fp32 summation order and the final bf16 rounding may differ,
  so the bound is 2^-8 of |y| plus 1e-5 of sum |w| |x|.
- end to end: against plain dequantize(W) @ x, where int8 activations cost up to half a quant
  step per value: each output within 1% of sum |w| |x|, and 2% of the outputs' norm overall.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from local_engine.kernels import cpu as cpu_kernels

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

pytestmark = pytest.mark.skipif(cpu_kernels._library() is None, reason="no C compiler here")
BF16 = torch.bfloat16
FORMATS = [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q6_K]


def _half_field(blocks: np.ndarray, offset: int, low: float, high: float, rng: np.random.Generator) -> None:
    values = rng.uniform(low, high, blocks.shape[:2]).astype(np.float16)
    blocks[:, :, offset : offset + 2] = values[..., None].view(np.uint8).reshape(*blocks.shape[:2], 2)


def quantized_weight(qtype: Q, n: int, k: int, seed: int = 0) -> np.ndarray:
    """A ``[n, row bytes]`` GGUF tensor: gguf-py's quantizer where it has one, else random blocks
    with sane fp16 scales (every bit pattern of the quants is then exercised)."""
    rng = np.random.default_rng(seed)
    if qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
        return quantize(rng.standard_normal((n, k)).astype(np.float32) * 0.05, qtype)
    values, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n, k // values * size), dtype=np.uint8)
    blocks = raw.reshape(n, k // values, size)
    if qtype == Q.Q4_K:  # d and dmin lead the block
        _half_field(blocks, 0, 1e-3, 1e-2, rng)
        _half_field(blocks, 2, 1e-3, 1e-2, rng)
    else:  # Q6_K: d ends it
        _half_field(blocks, 208, 5e-4, 2e-3, rng)
    return raw


def _q8_activations(x: torch.Tensor) -> np.ndarray:
    """x as the kernel quantizes it: per 32 values, in fp32, q = rint(x * (127 / max|x|)) and
    d = max|x| / 127."""
    blocks = x.float().numpy().reshape(x.shape[0], -1, 32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    q = np.rint(blocks * inv).astype(np.float64)
    return (q * (amax / np.float32(127)).astype(np.float64)).reshape(x.shape)


PANEL_FORMATS = [Q.Q4_0, Q.Q4_1, Q.Q8_0]


def _panels(raw: np.ndarray, qtype: Q, k: int) -> torch.Tensor:
    weight = torch.from_numpy(raw.copy())
    if not cpu_kernels.pack_panels(weight, int(qtype), k):
        pytest.skip("this build has no panel layout (no AVX512-VNNI)")
    return weight


LAYOUTS = [(q, False) for q in FORMATS] + [(q, True) for q in PANEL_FORMATS]


@pytest.mark.parametrize("qtype,panels", LAYOUTS, ids=lambda v: getattr(v, "name", "panels" if v else "rows"))
@pytest.mark.parametrize("rows", [1, 3, 4, 7, 16])
def test_quant_gemm_matches_dequantize_then_matmul(qtype: Q, panels: bool, rows: int) -> None:
    n, k = 208, 512  # 13 panels of 16: chunks that do not divide evenly among threads
    raw = quantized_weight(qtype, n, k, seed=rows)
    w = dequantize(raw, qtype).reshape(n, k).astype(np.float64)
    weight = _panels(raw, qtype, k) if panels else torch.from_numpy(raw)
    torch.manual_seed(rows)
    wide = torch.randn(rows, k + 64).to(BF16)
    x = wide[:, 32 : 32 + k]  # strided rows: the kernel must honour the row stride
    bias = torch.randn(n)
    got = cpu_kernels.quant_gemm(x, weight, int(qtype), bias, panels=panels).double().numpy()
    assert got.shape == (rows, n)
    magnitude = np.abs(x.double().numpy()) @ np.abs(w).T
    exact = _q8_activations(x) @ w.T + bias.double().numpy()
    assert np.all(np.abs(got - exact) <= np.abs(exact) * 2**-8 + 1e-5 * magnitude + 1e-6)
    plain = x.double().numpy() @ w.T + bias.double().numpy()
    assert np.all(np.abs(got - plain) <= 0.01 * magnitude + np.abs(plain) * 2**-8)
    assert np.linalg.norm(got - plain) <= 0.02 * np.linalg.norm(plain)


@pytest.mark.parametrize("qtype,panels", [(Q.Q4_1, False), (Q.Q6_K, False), (Q.Q4_1, True), (Q.Q8_0, True)])
def test_quant_gemm_fused_silu_mul(qtype: Q, panels: bool) -> None:
    """HF's bf16 MLP rounds gate and up to bf16, silu(gate) to bf16, then their product."""
    inter, k, rows = 96, 256, 5
    raw = quantized_weight(qtype, 2 * inter, k, seed=7)  # gate rows, then up rows
    weight = _panels(raw, qtype, k) if panels else torch.from_numpy(raw)
    torch.manual_seed(7)
    x = torch.randn(rows, k).to(BF16)
    bias = torch.randn(2 * inter)
    gate_up = cpu_kernels.quant_gemm(x, weight, int(qtype), bias, panels=panels)
    want = (torch.nn.functional.silu(gate_up[:, :inter].float()).to(BF16) * gate_up[:, inter:]).float()
    got = cpu_kernels.quant_gemm(x, weight, int(qtype), bias, silu_mul=True, panels=panels)
    assert got.shape == (rows, inter)
    assert torch.allclose(got.float(), want, rtol=2**-6, atol=1e-4)


@pytest.mark.parametrize("qtype,panels", LAYOUTS, ids=lambda v: getattr(v, "name", "panels" if v else "rows"))
def test_quant_rows_dequantize_exactly_as_gguf(qtype: Q, panels: bool) -> None:
    n, k = 48, 512
    raw = quantized_weight(qtype, n, k, seed=11)
    weight = _panels(raw, qtype, k) if panels else torch.from_numpy(raw)
    index = torch.tensor([[3, 0], [47, 17]])
    got = cpu_kernels.quant_rows(weight, int(qtype), k, index, panels=panels)
    assert got.shape == (2, 2, k) and got.dtype == BF16
    want = torch.from_numpy(dequantize(raw, qtype).reshape(n, k))[index].to(BF16)
    assert torch.equal(got, want)
    with pytest.raises(IndexError):
        cpu_kernels.quant_rows(weight, int(qtype), k, torch.tensor([n]), panels=panels)


def test_bad_quantized_weights_are_refused() -> None:
    raw = torch.from_numpy(quantized_weight(Q.Q4_1, 8, 64))
    x = torch.randn(2, 64).to(BF16)
    with pytest.raises(ValueError, match="not supported"):
        cpu_kernels.quant_gemm(x, raw, int(Q.Q5_0))
    with pytest.raises(ValueError, match="not supported"):  # 48 values: not whole blocks
        cpu_kernels.quant_gemm(torch.randn(2, 48).to(BF16), raw, int(Q.Q4_1))
    with pytest.raises(ValueError, match="uint8"):
        cpu_kernels.quant_gemm(x, raw[:, :20], int(Q.Q4_1))  # rows of one block, not two
    with pytest.raises(ValueError, match="bfloat16"):
        cpu_kernels.quant_gemm(x.float(), raw, int(Q.Q4_1))
    with pytest.raises(ValueError, match="panel"):  # 8 rows: half a panel
        cpu_kernels.quant_gemm(x, raw, int(Q.Q4_1), panels=True)
    assert not cpu_kernels.pack_panels(raw, int(Q.Q4_1), 64)  # and it is left as it was
    assert not cpu_kernels.pack_panels(torch.from_numpy(quantized_weight(Q.Q6_K, 16, 256)), int(Q.Q6_K), 256)


@pytest.mark.parametrize(
    "flags",
    [("-mno-avx512vnni", "-mno-avxvnni"), ("-mno-avx2",)],
    ids=["avx2-without-vnni", "portable-c"],
)
def test_quant_gemm_without_vnni_or_avx2_computes_the_same(flags: tuple[str, ...]) -> None:
    """The pmaddubsw path and the plain C path, built here with those extensions switched off."""
    from local_engine.kernels.cpu import _build

    try:
        lib = ctypes.CDLL(str(_build.build(flags)))
    except _build.BuildError as exc:
        pytest.skip(f"compiler rejected the variant: {exc}")
    fn = lib.sy_quant_gemm
    fn.restype, fn.argtypes = cpu_kernels._SIGNATURES["sy_quant_gemm"]
    torch.manual_seed(5)
    x = torch.randn(6, 512).to(BF16)
    for qtype in FORMATS:
        raw = torch.from_numpy(quantized_weight(qtype, 40, 512, seed=5))
        want = cpu_kernels.quant_gemm(x, raw, int(qtype))
        out = torch.empty((6, 40), dtype=BF16)
        args = (x.data_ptr(), 6, 512, 512, raw.data_ptr(), 40, None, out.data_ptr(), 40, 2, 0, 0, 0)
        assert fn(int(qtype), *args) == 0
        # same integer sums; fp32 summation order differs, so a last-bit bf16 difference at most
        assert torch.allclose(out.float(), want.float(), rtol=2**-7, atol=1e-5), qtype.name


@pytest.mark.parametrize("qtype,panels", LAYOUTS, ids=lambda v: getattr(v, "name", str(v)))
def test_quant_gemm_fp32_output_is_the_sum_before_rounding(qtype: Q, panels: bool) -> None:
    """``out_dtype=float32`` (logits) gives the fp32 sums the bf16 output is rounded from."""
    torch.manual_seed(9)
    x = torch.randn(5, 256).to(BF16)
    raw = quantized_weight(qtype, 48, 256, seed=9)
    weight = _panels(raw, qtype, 256) if panels else torch.from_numpy(raw)
    bias = torch.randn(48) * 0.1
    wide = cpu_kernels.quant_gemm(x, weight, int(qtype), bias, panels=panels, out_dtype=torch.float32)
    narrow = cpu_kernels.quant_gemm(x, weight, int(qtype), bias, panels=panels)
    assert wide.dtype == torch.float32 and torch.equal(wide.to(BF16), narrow)
    assert not torch.equal(wide, narrow.float())  # not merely widened from bf16
    with pytest.raises(ValueError, match="float32 without silu_mul"):
        cpu_kernels.quant_gemm(x, weight, int(qtype), silu_mul=True, panels=panels, out_dtype=torch.float32)
