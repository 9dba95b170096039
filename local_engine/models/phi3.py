"""Phi-3, Phi-3.5 and Phi-4 (HF ``Phi3ForCausalLM``): the Llama layer stack with q/k/v and gate/up
already fused in the checkpoint, an optional sliding window, partial rotary and LongRoPE.

The fused checkpoint tensors are split into the shards our fused layers load, so tensor-parallel
sharding stays the layers' business (as for Llama).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from local_engine.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` reading Phi-3's fused ``qkv_proj`` and ``gate_up_proj`` tensors."""

    def _split_fused(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        config = self.config
        q_size = config.num_attention_heads * config.head_dim
        kv_size = config.num_key_value_heads * config.head_dim
        for name, tensor in weights:
            if ".qkv_proj." in name:
                if tensor.shape[0] != q_size + 2 * kv_size:
                    # Let the shard loader name the misfit rather than splitting it wrongly.
                    yield name.replace(".qkv_proj.", ".q_proj."), tensor
                    continue
                q, k, v = tensor.split([q_size, kv_size, kv_size], dim=0)
                yield name.replace(".qkv_proj.", ".q_proj."), q
                yield name.replace(".qkv_proj.", ".k_proj."), k
                yield name.replace(".qkv_proj.", ".v_proj."), v
            elif ".gate_up_proj." in name:
                gate, up = tensor.chunk(2, dim=0)
                yield name.replace(".gate_up_proj.", ".gate_proj."), gate
                yield name.replace(".gate_up_proj.", ".up_proj."), up
            else:
                yield name, tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(self._split_fused(weights))
