"""The Llama family in one file: Llama 2/3.x, Mistral, Qwen2/2.5 (q/k/v bias), Qwen3 (per-head
q/k RMSNorm), SmolLM2 (tied embeddings), and the sliding window and partial rotary Phi-3 adds.

Parameter names follow Hugging Face's (``model.layers.N.self_attn.q_proj.weight`` ...); q/k/v and
gate/up are fused here and ``load_weights`` routes each checkpoint tensor to its shard. Built with
``tp_rank`` / ``tp_size``, a model holds one tensor-parallel rank's shard: its share of the
attention heads (and KV cache) and of the MLP, and a slice of the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from local_engine.attention.metadata import AttentionMetadata
from local_engine.attention.select import get_backend
from local_engine.layers import cpu_decoder
from local_engine.layers.activation import SiluAndMul
from local_engine.layers.attention import Attention
from local_engine.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from local_engine.layers.layernorm import RMSNorm
from local_engine.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from local_engine.layers.rotary import RotaryEmbedding, get_rope
from local_engine.models.config import ModelConfig

KVCache = tuple[torch.Tensor, torch.Tensor]


class WeightLoadError(ValueError):
    """Checkpoint tensors that do not match the model (unknown, missing or misshapen)."""


class LlamaAttention(nn.Module):
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
        # One table shared by every layer: at 128k positions it is tens of MB.
        self.rotary_emb = rotary_emb
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            self.head_dim**-0.5,
            self.num_kv_heads,
            sliding_window=config.window_of(layer),
        )
        self.qk_norm = config.qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        if self.qk_norm:
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = self.q_norm(q.reshape(num_tokens, self.num_heads, self.head_dim))
            k = self.k_norm(k.reshape(num_tokens, self.num_kv_heads, self.head_dim))
            q, k = self.rotary_emb(positions, q, k)  # type: ignore[arg-type]
        elif not self.attn.windowed(meta) and self.attn.rotary_fusable(qkv, self.rotary_emb, kv_cache):
            return self.o_proj(self.attn.forward_qkv(qkv, positions, self.rotary_emb, kv_cache, meta))
        else:
            # Rotate q and k heads together in one pass over the fused projection's output.
            heads = qkv.view(num_tokens, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
            qk = self.rotary_emb.apply(positions, heads[:, : self.num_heads + self.num_kv_heads])
            q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
            v = qkv[:, self.q_size + self.kv_size :]
        out = self.attn(q, k, v, kv_cache, meta)
        return self.o_proj(out)


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"activation {config.hidden_act!r} is not supported (silu)")
        size = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [size, size], bias=config.mlp_bias, tp_rank=tp_rank, tp_size=tp_size
        )
        self.down_proj = RowParallelLinear(
            size, config.hidden_size, bias=config.mlp_bias, tp_rank=tp_rank, tp_size=tp_size
        )
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.gate_up_proj.silu_and_mul(x)  # CPU decode batches: one fused kernel
        if hidden is None:
            hidden = self.act_fn(self.gate_up_proj(x))
        return self.down_proj(hidden)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, config: ModelConfig, rotary_emb: RotaryEmbedding, layer: int, tp_rank: int = 0, tp_size: int = 1
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, rotary_emb, layer, tp_rank, tp_size)
        self.mlp = LlamaMLP(config, tp_rank, tp_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)  # type: ignore[assignment]
        else:
            hidden, residual = self.input_layernorm(hidden, residual)  # type: ignore[misc]
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)  # type: ignore[misc]
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_rank, tp_size)
        rotary_emb = get_rope(
            config.head_dim,
            config.max_position_embeddings,
            config.rope_theta,
            config.rope_scaling,
            config.rotary_dim,
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, rotary_emb, i, tp_rank, tp_size)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

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
        if len(self.layers):
            self.layers[0].self_attn.rotary_emb.begin_step()  # shared by every layer
        hidden = self.embed_tokens(input_ids)
        fused = cpu_decoder.run(self, hidden, positions, kv_caches, meta)  # CPU decode: one C call
        if fused is not None:
            return fused
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, kv_cache, meta)
        hidden, _ = self.norm(hidden, residual)  # type: ignore[misc]
        return hidden


class LlamaForCausalLM(nn.Module):
    """``forward(input_ids [T], positions [T], kv_caches, meta) -> hidden [T, H]``;
    ``compute_logits(hidden [N, H]) -> float32 [N, vocab]``."""

    # checkpoint name fragment -> (fused module fragment, shard id)
    packed_modules: tuple[tuple[str, str, str | int], ...] = (
        (".q_proj.", ".qkv_proj.", "q"),
        (".k_proj.", ".qkv_proj.", "k"),
        (".v_proj.", ".qkv_proj.", "v"),
        (".gate_proj.", ".gate_up_proj.", 0),
        (".up_proj.", ".gate_up_proj.", 1),
    )

    def __init__(self, config: ModelConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, tp_rank, tp_size)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp_rank=tp_rank, tp_size=tp_size)
        if config.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named checkpoint tensors into the (fused) parameters; every parameter must be set."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # tied: the embedding table is the head
            target, shard_id = name, None
            for fragment, fused, shard in self.packed_modules:
                if fragment in name:
                    target, shard_id = name.replace(fragment, fused), shard
                    break
            param = params.get(target)
            if param is None:
                raise WeightLoadError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
            loader = getattr(param, "weight_loader", None)
            try:
                if loader is None:
                    if param.shape != tensor.shape:
                        raise ValueError(f"shape {tuple(tensor.shape)} does not fit {tuple(param.shape)}")
                    param.data.copy_(tensor)
                elif shard_id is None:
                    loader(param, tensor)
                else:
                    loader(param, tensor, shard_id)
            except ValueError as exc:
                raise WeightLoadError(f"checkpoint tensor {name!r}: {exc}") from exc
            loaded.add(f"{target}#{shard_id}")
        expected: set[str] = set()
        for pname in params:
            shards = [s for _, fused, s in self.packed_modules if fused in f".{pname}"]
            expected.update(f"{pname}#{s}" for s in (shards or [None]))
        missing = sorted(expected - loaded)
        if missing:
            shown = ", ".join(m.replace("#None", "") for m in missing[:8])
            raise WeightLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {shown}")
