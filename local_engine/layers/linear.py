"""Linear layers with tensor-parallel boundaries, in the manner of vLLM / nano-vllm.

Each parameter carries a ``weight_loader(param, loaded_weight, shard_id=None)`` that takes the
*full* checkpoint tensor and copies this rank's shard, so checkpoint loading never needs to know
how a layer is split. With ``tp_size > 1`` a row-parallel layer sums its partial outputs over the
default ``torch.distributed`` group (``local_engine.distributed`` sets it up); at ``tp_size == 1``
no collective is ever called.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from local_engine.kernels import cpu as cpu_kernels
from local_engine.layers import quant_linear
from local_engine.layers.quant_linear import QuantizedTensor

# On CPUs without bf16 dot products the C kernel (cpu_kernels.gemm, bf16 pairs widened for FMAs)
# serves up to this many rows, where a matmul is still a pass over its weight (memory-bound);
# past it oneDNN's fp32 kernel wins. With AVX512-BF16 the C kernel matched or beat oneDNN's bf16
# one at every size measured (1 to 512 rows, the whole SmolLM2 model: 15 vs 18 ms at 16 rows, 351
# vs 353 ms at 512), so it serves all of them and no oneDNN copy is kept.
_SMALL_MAX_ROWS = 16


@dataclass(slots=True)
class PackedWeight:
    """Reordered copies of one CPU bf16 weight (and its bias) for fast matmuls.

    ``vnni`` (when the C kernels are built) serves batches of up to ``vnni_max_rows`` rows; for
    a gated MLP's fused gate/up projection it is packed in ``cpu_kernels.gated_order``
    (``gated``) and serves only the fused ``silu(gate) * up``. Larger batches go to oneDNN:
    ``bf16``, its reordered copy, on CPUs with native bf16 dot products where the C kernel is
    missing; ``f32`` on CPUs without them, where oneDNN emulates bf16 about 3x slower than its
    fp32 kernel (exactly the same values widened to fp32). Every path computes the bf16 model's
    matmul with fp32 accumulation and rounds the result to bf16 once; only the summation order
    differs.
    """

    n: int
    weight: torch.Tensor  # the parameter itself (no copy), for calls no packed copy serves
    vnni: torch.Tensor | None = None
    vnni_bias: torch.Tensor | None = None  # fp32, in vnni's feature order
    vnni_max_rows: int = 0
    gated: bool = False
    bf16: torch.Tensor | None = None
    f32: torch.Tensor | None = None
    bias_f32: torch.Tensor | None = None


def _fp32_for_large_batches() -> bool:
    """Whether large batches use an fp32 copy: ``SWITCHYARD_CPU_F32_MATMUL`` = 1 / 0, else only on
    CPUs that lack native bf16 dot products (the copy costs twice the bf16 weights' memory)."""
    forced = os.environ.get("SWITCHYARD_CPU_F32_MATMUL", "auto").lower()
    if forced in ("0", "1"):
        return forced == "1"
    cpu = getattr(torch, "cpu", None)
    native = any(
        bool(getattr(cpu, probe, lambda: False)())
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return not native


def _pack(weight: torch.Tensor, bias: torch.Tensor | None = None, gated: bool = False) -> PackedWeight | None:
    """Packed copies of a CPU bf16 weight, or None where that is unavailable or disabled."""
    if (
        weight.device.type != "cpu"
        or weight.dtype != torch.bfloat16
        or os.environ.get("SWITCHYARD_CPU_PACKED_LINEAR", "1") == "0"
        or not torch.backends.mkldnn.is_available()
    ):
        return None
    w = weight.detach()
    try:
        packed = PackedWeight(w.shape[0], w)
        packed.bias_f32 = None if bias is None else bias.detach().float().contiguous()
        packed.vnni = cpu_kernels.pack_vnni(w, gated=gated)
        packed.gated = gated and packed.vnni is not None
        packed.vnni_bias = packed.bias_f32
        if packed.gated and packed.bias_f32 is not None:
            packed.vnni_bias = packed.bias_f32[cpu_kernels.gated_order(packed.n)].contiguous()
        if _fp32_for_large_batches():
            packed.vnni_max_rows = _SMALL_MAX_ROWS
            packed.f32 = torch.ops.mkldnn._reorder_linear_weight(w.float(), None)
        elif packed.vnni is not None:
            packed.vnni_max_rows = sys.maxsize
        else:
            packed.bf16 = torch.ops.mkldnn._reorder_linear_weight(w, None)
    except (AttributeError, RuntimeError):
        return None
    return packed


def _small_batch(x: torch.Tensor, packed: PackedWeight) -> bool:
    return (
        packed.vnni is not None and x.dtype == torch.bfloat16 and x.numel() // x.shape[-1] <= _SMALL_MAX_ROWS
    )


def packed_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` against a packed weight: the C kernel for a few rows, oneDNN for more. Both
    beat plain ``F.linear`` for bf16 on the CPU, which re-lays-out the weight on every call."""
    if not packed.gated and _small_batch(x, packed):
        out = cpu_kernels.gemm(x, packed.vnni, packed.n, packed.vnni_bias)
        assert out is not None  # vnni is only packed where gemm_available()
        return out
    if packed.f32 is not None:
        out = torch.ops.mkldnn._linear_pointwise(x.float(), packed.f32, packed.bias_f32, "none", [], "")
        return out.to(x.dtype)
    if packed.bf16 is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed.bf16, bias, "none", [], "")
    # Only a gated C-kernel copy (served by packed_silu_and_mul) and a call it cannot take.
    return F.linear(x, packed.weight, bias)


def packed_silu_and_mul(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor | None:
    """``silu(gate) * up`` of a gated projection in one kernel call, or None where it does not
    apply (not packed ``gated``, too many rows) and the caller takes the two-step path."""
    if not packed.gated or not _small_batch(x, packed):
        return None
    return cpu_kernels.gemm(x, packed.vnni, packed.n, packed.vnni_bias, silu_mul=True)


def pack_cpu_weights(model: nn.Module) -> int:
    """Pack every linear layer's (and the LM head's) weight for CPU bf16 matmuls; returns how many.

    Call after the weights are loaded and final; a packed copy is not refreshed if they change.
    """
    return sum(1 for m in model.modules() if hasattr(m, "pack_weight") and m.pack_weight())


def _divide(numerator: int, denominator: int) -> int:
    if numerator % denominator:
        raise ValueError(f"size {numerator} does not split over {denominator} tensor-parallel ranks")
    return numerator // denominator


class LinearBase(nn.Module):
    """``y = x W^T + b`` with ``W`` split along ``tp_dim`` (0: output rows, 1: input columns)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool,
        tp_dim: int | None,
        tp_rank: int = 0,
        tp_size: int = 1,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.tp_dim = tp_dim
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        local_out = output_size if tp_dim != 0 else _divide(output_size, tp_size)
        local_in = input_size if tp_dim != 1 else _divide(input_size, tp_size)
        self.weight = nn.Parameter(torch.empty(local_out, local_in))
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        if bias:
            self.bias = nn.Parameter(torch.zeros(local_out))
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        else:
            self.register_parameter("bias", None)
        self._packed: PackedWeight | None = None
        self._quant_bias: torch.Tensor | None = None  # fp32, for a quantized weight

    def pack_weight(self) -> bool:
        """Keep a oneDNN-packed copy of the weight for CPU bf16 matmuls (see ``pack_cpu_weights``);
        a quantized weight is rearranged in place instead (``quant_linear.pack``)."""
        if quant_linear.is_quantized(self.weight):
            quant_linear.pack(self.weight)
            self._quant_bias = None if self.bias is None else self.bias.detach().float().contiguous()
            return True
        self._packed = _pack(self.weight, self.bias)
        return self._packed is not None

    def _copy(self, param: torch.Tensor, loaded: torch.Tensor | QuantizedTensor, row_offset: int = 0) -> None:
        """``loaded`` into ``param`` (rows ``row_offset...`` of the weight, for a quantized one)."""
        shape = tuple(param.shape)
        if param.dtype == torch.uint8 and quant_linear.is_quantized(self.weight):
            shape = (shape[0], quant_linear.row_values(self.weight))  # a view of rows of blocks
        if shape != tuple(loaded.shape):
            raise ValueError(f"checkpoint tensor shape {tuple(loaded.shape)} does not fit {shape}")
        if isinstance(loaded, QuantizedTensor):
            quant_linear.store_rows(self, "weight", loaded, row_offset, self.weight.shape[0])
        else:
            param.copy_(loaded)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        self._copy(param.data, loaded)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if quant_linear.is_quantized(self.weight):
            return quant_linear.linear(x, self.weight, self._quant_bias)
        if self._packed is not None:
            return packed_linear(x, self._packed, self.bias)
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; the output stays sharded (no collective)."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1
    ) -> None:
        super().__init__(input_size, output_size, bias, tp_dim=0, tp_rank=tp_rank, tp_size=tp_size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        size = param.data.shape[0]
        self._copy(param.data, loaded.narrow(0, self.tp_rank * size, size))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input fused into one matmul (gate + up)."""

    def __init__(
        self, input_size: int, output_sizes: list[int], bias: bool = False, tp_rank: int = 0, tp_size: int = 1
    ) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias, tp_rank, tp_size)

    def pack_weight(self) -> bool:
        """As ``LinearBase.pack_weight``; a gate/up pair is packed for the fused activation."""
        if quant_linear.is_quantized(self.weight):
            return super().pack_weight()
        gated = len(self.output_sizes) == 2 and self.output_sizes[0] == self.output_sizes[1]
        self._packed = _pack(self.weight, self.bias, gated=gated)
        return self._packed is not None

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor | None:
        """``silu(gate) * up`` of this gate/up projection in one fused call, or None where the
        fused kernel does not apply (use ``SiluAndMul()(self(x))``)."""
        gated = len(self.output_sizes) == 2 and self.output_sizes[0] == self.output_sizes[1]
        if quant_linear.is_quantized(self.weight):
            if not gated or not quant_linear.fuses_silu_mul(self.weight):
                return None
            return quant_linear.linear(x, self.weight, self._quant_bias, silu_mul=True)
        return None if self._packed is None else packed_silu_and_mul(x, self._packed)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        if not isinstance(shard_id, int):
            raise ValueError("MergedColumnParallelLinear needs an integer shard_id")
        offset = _divide(sum(self.output_sizes[:shard_id]), self.tp_size)
        size = _divide(self.output_sizes[shard_id], self.tp_size)
        target = param.data.narrow(0, offset, size)
        self._copy(target, loaded.narrow(0, self.tp_rank * size, size), offset)


class QKVParallelLinear(ColumnParallelLinear):
    """Q, K and V projections fused; heads are split across ranks (KV heads replicated if fewer)."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        total_num_heads: int,
        total_num_kv_heads: int,
        bias: bool = False,
        tp_rank: int = 0,
        tp_size: int = 1,
    ) -> None:
        if total_num_heads % tp_size:
            raise ValueError(f"{total_num_heads} attention heads do not split over {tp_size} ranks")
        if total_num_kv_heads % tp_size and tp_size % total_num_kv_heads:
            raise ValueError(
                f"{total_num_kv_heads} KV heads neither split over nor replicate evenly on {tp_size} ranks"
            )
        self.head_dim = head_dim
        self.num_heads = total_num_heads // tp_size
        # With more ranks than KV heads each KV head is replicated on tp_size / kv_heads ranks.
        self.num_kv_heads = max(1, total_num_kv_heads // tp_size)
        self.kv_replicas = max(1, tp_size // total_num_kv_heads)
        output_size = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp_size
        super().__init__(hidden_size, output_size, bias, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, size, rank = 0, q_size, self.tp_rank
        elif shard_id == "k":
            offset, size, rank = q_size, kv_size, self.tp_rank // self.kv_replicas
        elif shard_id == "v":
            offset, size, rank = q_size + kv_size, kv_size, self.tp_rank // self.kv_replicas
        else:
            raise ValueError(f"QKVParallelLinear shard_id must be 'q', 'k' or 'v', not {shard_id!r}")
        target = param.data.narrow(0, offset, size)
        self._copy(target, loaded.narrow(0, rank * size, size), offset)


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs are summed (all-reduce)."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1
    ) -> None:
        super().__init__(input_size, output_size, bias, tp_dim=1, tp_rank=tp_rank, tp_size=tp_size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        if param.data.dim() == 1:  # the bias is not split; only rank 0 adds it
            self._copy(param.data, loaded if self.tp_rank == 0 else torch.zeros_like(loaded))
            return
        size = param.data.shape[1]
        self._copy(param.data, loaded.narrow(1, self.tp_rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._matmul(x)
        if self.tp_size > 1:
            torch.distributed.all_reduce(y)
        return y
