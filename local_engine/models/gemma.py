"""Gemma 2 and Gemma 3 (text), HF ``Gemma2ForCausalLM`` / ``Gemma3ForCausalLM`` (and the language model
of ``Gemma3ForConditionalGeneration``).

What sets them apart from Llama: embeddings scaled by ``sqrt(hidden)``; RMSNorm scaling by
``1 + weight`` in float32 before rounding; norms after attention and around the MLP (four per
layer); GeGLU (tanh-approximated GELU); the query scale ``query_pre_attn_scalar ** -0.5``; sliding
and global layers alternating. Gemma 2 soft-caps attention scores and the final logits; Gemma 3
normalises q and k per head and rotates local layers with their own RoPE base.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from local_engine.attention.metadata import AttentionMetadata
from local_engine.attention.select import get_backend
from local_engine.layers.attention import Attention
from local_engine.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from local_engine.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    _pack,
)
from local_engine.layers.rotary import RotaryEmbedding, get_rope
from local_engine.models.config import ModelConfig
from local_engine.models.llama import KVCache, LlamaForCausalLM

_GELU_TANH = {"gelu_pytorch_tanh", "gelu_tanh", "gelu_new", "gelu_fast", "gelu"}


class GemmaRMSNorm(nn.Module):
    """``x / rms(x) * (1 + weight)``, computed in float32 and rounded once (transformers' order)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (self.hidden_size,), None, self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


class _GateUp(MergedColumnParallelLinear):
    """Gate/up projection for GeGLU: packed as a plain matmul (the gated CPU packing fuses SiLU)."""

    def pack_weight(self) -> bool:
        self._packed = _pack(self.weight, self.bias)
        return self._packed is not None


class GemmaMLP(nn.Module):
    def __init__(self, config: ModelConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
        super().__init__()
        if config.hidden_act not in _GELU_TANH:
            raise ValueError(f"activation {config.hidden_act!r} is not supported (gelu_pytorch_tanh)")
        size = config.intermediate_size
        self.gate_up_proj = _GateUp(config.hidden_size, [size, size], tp_rank=tp_rank, tp_size=tp_size)
        self.down_proj = RowParallelLinear(size, config.hidden_size, tp_rank=tp_rank, tp_size=tp_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh").mul_(up))


class GemmaAttention(nn.Module):
    def __init__(
        self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer: int, tp_rank: int = 0, tp_size: int = 1
    ) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            self.head_dim,
            config.num_attention_heads,
            config.num_key_value_heads,
            bias=config.qkv_bias,
            tp_rank=tp_rank,
            tp_size=tp_size,
        )
        # This rank's heads.
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * self.head_dim,
            config.hidden_size,
            bias=config.o_bias,
            tp_rank=tp_rank,
            tp_size=tp_size,
        )
        self.rotary_emb = rotary_emb
        scalar = config.query_pre_attn_scalar or float(self.head_dim)
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            scalar**-0.5,
            self.num_kv_heads,
            sliding_window=config.window_of(layer),
            logit_softcap=config.attn_logit_softcap,
        )
        self.qk_norm = config.qk_norm
        if self.qk_norm:
            self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(num_tokens, self.num_heads, self.head_dim)
        k = k.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, kv_cache, meta))


class GemmaDecoderLayer(nn.Module):
    """Norms on both sides of attention and of the MLP (Gemma 2's "sandwich" layout)."""

    def __init__(
        self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer: int, tp_rank: int = 0, tp_size: int = 1
    ) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.self_attn = GemmaAttention(config, rotary_emb, layer, tp_rank, tp_size)
        self.mlp = GemmaMLP(config, tp_rank, tp_size)
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        attn = self.self_attn(positions, self.input_layernorm(hidden), kv_cache, meta)
        hidden = hidden + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(hidden))
        return hidden + self.post_feedforward_layernorm(mlp)


class GemmaModel(nn.Module):
    def __init__(self, config: ModelConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_rank, tp_size)
        self.embed_scale = config.hidden_size**0.5
        rope_max = config.max_position_embeddings
        global_rope = get_rope(config.head_dim, rope_max, config.rope_theta, config.rope_scaling)
        # Gemma 3's local layers: their own base, no scaling. Gemma 2: one rotary for all layers.
        local_rope = global_rope
        if config.local_rope_theta is not None:
            local_rope = get_rope(config.head_dim, rope_max, config.local_rope_theta)
        self.ropes = [global_rope] if local_rope is global_rope else [global_rope, local_rope]
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(config, local_rope if config.window_of(i) else global_rope, i, tp_rank, tp_size)
            for i in range(config.num_hidden_layers)
        )
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        begin_step = getattr(get_backend(input_ids.device), "begin_step", None)
        if begin_step is not None:
            begin_step()
        for rope in self.ropes:
            rope.begin_step()
        embeds = self.embed_tokens(input_ids)
        # transformers rounds the scale to the weights' dtype before multiplying.
        hidden = embeds * torch.tensor(self.embed_scale, dtype=embeds.dtype)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden = layer(positions, hidden, kv_cache, meta)
        return self.norm(hidden)


class Gemma2ForCausalLM(LlamaForCausalLM):
    """``forward(input_ids [T], positions [T], kv_caches, meta) -> hidden [T, H]``;
    ``compute_logits(hidden [N, H]) -> float32 [N, vocab]`` (soft-capped when the config says so)."""

    def __init__(self, config: ModelConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
        # Llama's forward and checkpoint loading serve as they are; only the layer stack differs.
        nn.Module.__init__(self)
        self.config = config
        self.model = GemmaModel(config, tp_rank, tp_size)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp_rank=tp_rank, tp_size=tp_size)
        if config.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


# Gemma 3 multimodal checkpoints nest the language model; (prefix, our prefix), transformers 4 and 5.
_LANGUAGE_MODEL_PREFIXES = (
    ("language_model.model.", "model."),
    ("model.language_model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    """Gemma 3's text model; from a multimodal checkpoint the vision tower's tensors are skipped."""

    @staticmethod
    def _language_model(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            if name.startswith(_VISION_PREFIXES):
                continue
            for prefix, ours in _LANGUAGE_MODEL_PREFIXES:
                if name.startswith(prefix):
                    name = ours + name.removeprefix(prefix)
                    break
            yield name, tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(self._language_model(weights))
