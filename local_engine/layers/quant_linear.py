"""Weights kept in a GGUF file's quantization (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) on the CPU.

A quantized weight is an ``nn.Parameter`` of raw block bytes (uint8 ``[rows, row bytes]``)
tagged with its GGML type and its row length in values; it replaces the layer's dense
parameter when the first quantized checkpoint tensor reaches it, before the dense one is ever
written, so the model holds exactly one copy of its weights (the allocator never touched the
dense one's pages). Matmuls run on the blocks (``cpu_kernels.quant_gemm``); embedding lookups
widen only the rows asked for (``cpu_kernels.quant_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from local_engine.kernels import cpu as cpu_kernels


@dataclass(frozen=True, slots=True)
class QuantizedTensor:
    """A checkpoint tensor as a GGUF file stores it: ``data`` uint8 ``[rows, row bytes]``, each row
    the quantized blocks of ``shape[1]`` values of GGML type ``qtype``."""

    data: torch.Tensor
    qtype: int
    shape: tuple[int, int]

    def narrow(self, dim: int, start: int, length: int) -> QuantizedTensor:
        """Rows ``[start, start + length)``; a block row cannot be split along its values."""
        if dim == 0:
            return QuantizedTensor(self.data.narrow(0, start, length), self.qtype, (length, self.shape[1]))
        if dim == 1 and start == 0 and length == self.shape[1]:
            return self
        raise ValueError("a quantized tensor cannot be split along its input dimension")


def is_quantized(weight: torch.Tensor) -> bool:
    return hasattr(weight, "ggml_type")


def _meta(weight: torch.Tensor) -> tuple[int, int, bool]:
    """A quantized weight's GGML type, values per row, and whether it is in the panel layout."""
    return weight.ggml_type, weight.quant_values, weight.quant_panels  # type: ignore[attr-defined]


def row_values(weight: torch.Tensor) -> int:
    """Values per row of a quantized weight (its dense shape's second dimension)."""
    return _meta(weight)[1]


def store_rows(module: nn.Module, name: str, loaded: QuantizedTensor, row_offset: int, rows: int) -> None:
    """Copy ``loaded`` into rows ``[row_offset, ...)`` of ``module.<name>``, which becomes a
    quantized parameter of ``rows`` rows on the first call (later shards must share the type)."""
    param = getattr(module, name)
    if not is_quantized(param):
        loader = getattr(param, "weight_loader", None)
        param = nn.Parameter(
            torch.empty((rows, loaded.data.shape[1]), dtype=torch.uint8), requires_grad=False
        )
        param.ggml_type, param.quant_values, param.quant_panels = loaded.qtype, loaded.shape[1], False  # type: ignore[attr-defined]
        if loader is not None:
            param.weight_loader = loader  # type: ignore[attr-defined]
        setattr(module, name, param)
    qtype, values, _ = _meta(param)
    if (qtype, values) != (loaded.qtype, loaded.shape[1]):
        raise ValueError(f"shards of one weight differ in quantization ({qtype} vs {loaded.qtype})")
    param.data.narrow(0, row_offset, loaded.shape[0]).copy_(loaded.data)


def pack(weight: torch.Tensor) -> None:
    """Rearrange a quantized weight into the kernels' panel layout where they have one (in place,
    once; a tied embedding and LM head share the parameter)."""
    if not is_quantized(weight):
        return
    qtype, values, panels = _meta(weight)
    if not panels:
        weight.quant_panels = cpu_kernels.pack_panels(weight.data, qtype, values)  # type: ignore[attr-defined]


def fuses_silu_mul(weight: torch.Tensor) -> bool:
    """Whether the kernel can fuse SiLU-and-mul on this gate/up weight: its two halves must each
    be whole panels in the panel layout (16 rows), or just whole rows in the row layout."""
    _, _, panels = _meta(weight)
    return weight.shape[0] % (32 if panels else 2) == 0


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias_f32: torch.Tensor | None,
    silu_mul: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x @ W.T + b`` (or ``silu(gate) * up`` of a gate/up weight) on a quantized weight, in
    ``out_dtype`` (default ``x``'s). The kernels take bf16 activations (other dtypes round-trip
    through bf16) and write bf16 or, for float32 (logits), their fp32 sums unrounded."""
    qtype, _, panels = _meta(weight)
    want = out_dtype or x.dtype
    kernel_out = torch.float32 if want == torch.float32 and not silu_mul else torch.bfloat16
    out = cpu_kernels.quant_gemm(
        x.to(torch.bfloat16), weight.data, qtype, bias_f32, silu_mul, panels, out_dtype=kernel_out
    )
    return out if out.dtype == want else out.to(want)


def embedding(input_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows ``input_ids`` of a quantized embedding table, dequantized to bf16."""
    qtype, values, panels = _meta(weight)
    return cpu_kernels.quant_rows(weight.data, qtype, values, input_ids, panels=panels)
