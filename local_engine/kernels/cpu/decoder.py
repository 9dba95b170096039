"""A whole decode step of a Llama-style decoder stack in one C call (``decoder.c``).

``DecoderPlan`` holds the C structures describing the stack (every layer's norms, projections and
KV caches as raw pointers) and the tensors they point into, so those stay alive and unmoved as
long as the plan does. It is built once per model and KV cache; a step then costs one ctypes call
instead of some three hundred Python-level kernel calls. The caller decides which models and
steps qualify (``local_engine.layers.cpu_decoder``); this module only checks what the C code
relies on (dtypes, shapes, contiguity).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from local_engine.kernels import cpu as cpu_kernels

_I64 = ctypes.c_int64
_I32 = ctypes.c_int32
_P = ctypes.c_void_p
PANEL = cpu_kernels.PANEL


class _Linear(ctypes.Structure):
    _fields_ = [("w", _P), ("bias", _P), ("n", _I64), ("k", _I64), ("qtype", _I32), ("panels", _I32)]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("input_norm", _P),
        ("post_norm", _P),
        ("qkv", _Linear),
        ("o", _Linear),
        ("gate_up", _Linear),
        ("down", _Linear),
        ("k_cache", _P),
        ("v_cache", _P),
    ]


class _Decoder(ctypes.Structure):
    _fields_ = [
        ("num_layers", _I64),
        ("hidden", _I64),
        ("hq", _I64),
        ("hkv", _I64),
        ("d", _I64),
        ("intermediate", _I64),
        ("block_size", _I64),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("cos_sin", _P),
        ("final_norm", _P),
        ("layers", ctypes.POINTER(_Layer)),
    ]


@dataclass(frozen=True, slots=True)
class Projection:
    """One projection as the C step reads it: ``weight`` GGUF blocks (uint8 ``[n, row bytes]``,
    ``qtype`` their GGML type, ``panels`` in quant.c's panel layout) or, with ``qtype`` 0, a bf16
    weight packed by ``cpu_kernels.pack_vnni`` (gated for a gate/up projection); ``bias`` fp32."""

    weight: torch.Tensor
    n: int
    k: int
    qtype: int = 0
    panels: bool = False
    bias: torch.Tensor | None = None


@dataclass(frozen=True, slots=True)
class LayerWeights:
    input_norm: torch.Tensor  # bf16 [hidden]
    post_norm: torch.Tensor
    qkv: Projection
    o: Projection
    gate_up: Projection  # gate rows then up rows (quantized), or gated_order (packed bf16)
    down: Projection
    k_cache: torch.Tensor  # bf16 [blocks, block_size, hkv, d]
    v_cache: torch.Tensor


def _check_norm(t: torch.Tensor, hidden: int) -> None:
    if t.dtype != torch.bfloat16 or t.numel() != hidden or not t.is_contiguous():
        raise ValueError(f"a norm weight must be {hidden} contiguous bf16 values")


def _linear(p: Projection, n: int, k: int) -> _Linear:
    if (p.n, p.k) != (n, k):
        raise ValueError(f"a projection of {p.n}x{p.k} where {n}x{k} is needed")
    if p.qtype:
        cpu_kernels._check_quant(p.weight, p.qtype, k)
        if p.weight.shape[0] != n:
            raise ValueError(f"quantized weight of {p.weight.shape[0]} rows, not {n}")
    elif p.weight.dtype != torch.bfloat16 or p.weight.shape != (-(-n // PANEL), PANEL * k):
        raise ValueError("a bf16 projection must be packed by pack_vnni")
    bias = p.bias
    if bias is not None and (bias.dtype != torch.float32 or bias.numel() != n or not bias.is_contiguous()):
        raise ValueError(f"a bias must be {n} contiguous fp32 values")
    bias_ptr = None if bias is None else bias.data_ptr()
    return _Linear(p.weight.data_ptr(), bias_ptr, n, k, p.qtype, int(p.panels))


class DecoderPlan:
    """The decoder stack of one model over one set of KV caches, ready for ``forward``."""

    def __init__(
        self,
        layers: list[LayerWeights],
        *,
        hidden: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        intermediate: int,
        eps: float,
        scale: float,
        cos_sin: torch.Tensor,
        final_norm: torch.Tensor,
    ) -> None:
        if not layers:
            raise ValueError("a decoder plan needs at least one layer")
        if not cpu_kernels.decode_supported(num_heads, num_kv_heads, head_dim):
            raise ValueError(f"{num_heads} heads over {num_kv_heads} KV heads of {head_dim}: too many")
        if cos_sin.dtype != torch.bfloat16 or not cos_sin.is_contiguous() or cos_sin.shape[1] != head_dim:
            raise ValueError("cos_sin must be a contiguous bf16 [max_pos, head_dim] table")
        _check_norm(final_norm, hidden)
        block_size = layers[0].k_cache.shape[1]
        qkv_n = (num_heads + 2 * num_kv_heads) * head_dim
        structs = (_Layer * len(layers))()
        for i, lw in enumerate(layers):
            _check_norm(lw.input_norm, hidden)
            _check_norm(lw.post_norm, hidden)
            for cache in (lw.k_cache, lw.v_cache):
                if (
                    cache.dtype != torch.bfloat16
                    or not cache.is_contiguous()
                    or cache.dim() != 4
                    or tuple(cache.shape[1:]) != (block_size, num_kv_heads, head_dim)
                ):
                    raise ValueError("KV caches must be contiguous bf16 [blocks, block_size, Hkv, D]")
            if lw.gate_up.qtype and lw.gate_up.panels and lw.gate_up.n % 32:
                raise ValueError("a panel-layout gate/up must hold whole panels in each half")
            if not lw.gate_up.qtype and lw.gate_up.n % PANEL:
                raise ValueError("a packed gate/up must hold whole panels")
            s = structs[i]
            s.input_norm, s.post_norm = lw.input_norm.data_ptr(), lw.post_norm.data_ptr()
            s.qkv = _linear(lw.qkv, qkv_n, hidden)
            s.o = _linear(lw.o, hidden, num_heads * head_dim)
            s.gate_up = _linear(lw.gate_up, 2 * intermediate, hidden)
            s.down = _linear(lw.down, hidden, intermediate)
            s.k_cache, s.v_cache = lw.k_cache.data_ptr(), lw.v_cache.data_ptr()
        self._layers = layers  # the tensors the structures point into
        self._cos_sin, self._final_norm, self._structs = cos_sin, final_norm, structs
        self._decoder = _Decoder(
            len(layers),
            hidden,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate,
            block_size,
            eps,
            scale,
            cos_sin.data_ptr(),
            final_norm.data_ptr(),
            structs,
        )
        self._ref = ctypes.byref(self._decoder)
        self.hidden, self.block_size = hidden, block_size
        self.has_bf16 = any(not p.qtype for lw in layers for p in (lw.qkv, lw.o, lw.gate_up, lw.down))
        self.max_position = cos_sin.shape[0]

    def forward(
        self,
        embedded: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        max_seq_len: int,
    ) -> torch.Tensor:
        """The final norm's output ``[T, hidden]`` for ``T`` tokens, token ``t`` at
        ``positions[t]`` of its own sequence (``block_tables[t]``, ``seq_lens[t]`` tokens of
        context, itself included, at most ``max_seq_len``), its K/V written at
        ``slot_mapping[t]`` (-1 skips)."""
        tokens = embedded.shape[0]
        if embedded.dtype != torch.bfloat16 or embedded.shape != (tokens, self.hidden):
            raise ValueError(f"embeddings must be bf16 [T, {self.hidden}]")
        embedded = embedded.contiguous()
        pos = cpu_kernels._as(positions, torch.int64)
        slots = cpu_kernels._as(slot_mapping, torch.int64)
        tables = cpu_kernels._as(block_tables, torch.int32)
        lens = cpu_kernels._as(seq_lens, torch.int32)
        if not pos.numel() == slots.numel() == lens.numel() == tables.shape[0] == tokens:
            raise ValueError("positions, slot_mapping, seq_lens and block_tables need one entry per token")
        # The C code trusts these: no reads past the block tables or the rotary table.
        if max_seq_len > min(tables.shape[1] * self.block_size, self.max_position):
            raise ValueError(f"{max_seq_len} tokens overrun the block tables or the rotary table")
        out = torch.empty((tokens, self.hidden), dtype=torch.bfloat16)
        rc = cpu_kernels._lib().sy_decoder_forward(
            self._ref,
            embedded.data_ptr(),
            tokens,
            pos.data_ptr(),
            slots.data_ptr(),
            tables.data_ptr(),
            tables.shape[1],
            lens.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        if rc == -2:
            raise MemoryError("decoder step: could not allocate its scratch")
        if rc != 0:
            raise RuntimeError(f"decoder step: a kernel refused its shapes ({rc})")
        return out
