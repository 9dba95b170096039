"""CPU decode steps of a Llama-family model in one C call (``kernels/cpu/decoder.c``).

``run(model, ...)`` takes a decode step (one new token per sequence) past the layer-by-layer
Python path when every layer would have taken the fused CPU kernels anyway: bf16 activations and
KV cache, projections either quantized (``quant_linear``) or packed for the bf16 kernel with a
fused SiLU-and-mul, RMSNorm, rotary fused with the cache write and paged decode attention. The C
step calls those same kernels in the same order, so its output is bit for bit the Python path's;
anything else (prefill chunks, sliding windows, q/k norms, tensor parallelism, GPUs, more rows
than the bf16 kernel serves) returns None and the caller runs its layers as before.
``SWITCHYARD_CPU_DECODER=0`` (read when a model's first decode step runs) keeps every step on the
layer-by-layer path, to compare.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from local_engine.attention.metadata import AttentionMetadata
from local_engine.kernels import cpu as cpu_kernels
from local_engine.kernels.cpu.decoder import DecoderPlan, LayerWeights, Projection
from local_engine.layers import quant_linear
from local_engine.layers.layernorm import RMSNorm
from local_engine.layers.linear import LinearBase, MergedColumnParallelLinear
from local_engine.layers.rotary import RotaryEmbedding

# The bf16 projections' packed kernel serves this many rows (layers/linear.py's _SMALL_MAX_ROWS);
# past it the Python path takes oneDNN on some CPUs, so the C step would round differently.
_BF16_MAX_ROWS = 16


class _Unsupported(Exception):
    """The model has a part the C step does not do."""


def _projection(linear: nn.Module, gated: bool = False) -> Projection:
    if not isinstance(linear, LinearBase) or linear.tp_size != 1:
        raise _Unsupported("not a single-rank linear layer")
    weight = linear.weight
    n, k = linear.output_size, linear.input_size
    if quant_linear.is_quantized(weight):
        qtype, _, panels = quant_linear._meta(weight)
        if gated and not quant_linear.fuses_silu_mul(weight):
            raise _Unsupported("gate/up cannot fuse SiLU-and-mul")
        return Projection(weight.data, n, k, qtype, panels, linear._quant_bias)
    packed = linear._packed
    if packed is None or packed.vnni is None or packed.gated != gated:
        raise _Unsupported("bf16 weight not packed for the C kernel")
    if packed.vnni_max_rows < _BF16_MAX_ROWS:
        raise _Unsupported("bf16 weight not packed for the C kernel")
    return Projection(packed.vnni, n, k, bias=packed.vnni_bias)


def _norm(norm: nn.Module) -> torch.Tensor:
    if type(norm) is not RMSNorm or norm.weight.dtype != torch.bfloat16:
        raise _Unsupported("not a bf16 RMSNorm")
    return norm.weight.detach()


def build_plan(model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> DecoderPlan:
    """The C step's plan for a ``LlamaModel`` over ``kv_caches``; raises ``_Unsupported``."""
    from local_engine.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP

    layers: list[LayerWeights] = []
    rotary: RotaryEmbedding | None = None
    first = None
    for layer, (k_cache, v_cache) in zip(model.layers, kv_caches, strict=True):
        if type(layer) is not LlamaDecoderLayer:
            raise _Unsupported("not a Llama decoder layer")
        attn, mlp = layer.self_attn, layer.mlp
        if type(attn) is not LlamaAttention or type(mlp) is not LlamaMLP or attn.qk_norm:
            raise _Unsupported("attention or MLP beyond the plain Llama ones")
        inner = attn.attn
        if inner.sliding_window is not None or inner.logit_softcap is not None:
            raise _Unsupported("windowed or soft-capped attention")
        if type(attn.rotary_emb) is not RotaryEmbedding or attn.rotary_emb.rotary_dim != attn.head_dim:
            raise _Unsupported("partial or custom rotary")
        if rotary is not None and attn.rotary_emb is not rotary:
            raise _Unsupported("rotary tables differ between layers")
        rotary = attn.rotary_emb
        gate_up = mlp.gate_up_proj
        if not isinstance(gate_up, MergedColumnParallelLinear) or len(set(gate_up.output_sizes)) != 1:
            raise _Unsupported("not a gate/up pair")
        if k_cache.numel() == 0 or k_cache.dtype != torch.bfloat16:
            raise _Unsupported("no bf16 KV cache")
        shape = (attn.num_heads, attn.num_kv_heads, attn.head_dim, inner.scale)
        if first is None:
            first = shape
        elif shape != first:
            raise _Unsupported("layers differ in shape")
        layers.append(
            LayerWeights(
                _norm(layer.input_layernorm),
                _norm(layer.post_attention_layernorm),
                _projection(attn.qkv_proj),
                _projection(attn.o_proj),
                _projection(gate_up, gated=True),
                _projection(mlp.down_proj),
                k_cache,
                v_cache,
            )
        )
    if rotary is None or first is None:
        raise _Unsupported("no layers")
    num_heads, num_kv_heads, head_dim, scale = first
    final_norm = _norm(model.norm)
    if not cpu_kernels.decode_supported(num_heads, num_kv_heads, head_dim):
        raise _Unsupported("head layout beyond the decode kernel")
    try:
        return DecoderPlan(
            layers,
            hidden=final_norm.numel(),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            intermediate=model.layers[0].mlp.gate_up_proj.output_sizes[0],
            eps=model.norm.eps,
            scale=scale,
            cos_sin=rotary.table(torch.bfloat16, torch.device("cpu")),
            final_norm=final_norm,
        )
    except ValueError as exc:
        raise _Unsupported(str(exc)) from exc


def _plan_for(model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> DecoderPlan | None:
    """The model's plan for these caches (built on first use, and None for good where the model
    does not qualify). The plan holds raw pointers: weights must not change after loading."""
    key = (id(kv_caches), len(kv_caches), kv_caches[0][0].data_ptr())
    cached = getattr(model, "_cpu_decoder", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    plan: DecoderPlan | None = None
    if os.environ.get("SWITCHYARD_CPU_DECODER", "1") != "0":
        try:
            plan = build_plan(model, kv_caches)
        except _Unsupported:
            plan = None
    model._cpu_decoder = (key, plan)
    return plan


def run(
    model: nn.Module,
    embedded: torch.Tensor,
    positions: torch.Tensor,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    meta: AttentionMetadata,
) -> torch.Tensor | None:
    """The final hidden states of a decode step in one C call, or None where the step does not
    qualify (see the module docstring)."""
    if meta.max_query_len != 1 or not kv_caches or not cpu_kernels.usable(embedded):
        return None
    plan = _plan_for(model, kv_caches)
    if plan is None or (plan.has_bf16 and embedded.shape[0] > _BF16_MAX_ROWS):
        return None
    return plan.forward(
        embedded, positions, meta.slot_mapping, meta.block_tables, meta.seq_lens, meta.max_seq_len
    )
