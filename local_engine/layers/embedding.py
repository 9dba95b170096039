"""Token embedding and the LM head (vocabulary split along rows when tensor parallel).

A vocabulary that does not divide by ``tp_size`` is padded: every rank holds ``ceil(V / tp_size)``
rows, the last one's tail zeros that no token id reaches and whose logits are cut off after the
gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from local_engine.layers import quant_linear
from local_engine.layers.quant_linear import QuantizedTensor


class VocabParallelEmbedding(nn.Module):
    """Embedding table holding rows ``[tp_rank * S, (tp_rank + 1) * S)`` of the vocabulary,
    ``S = ceil(V / tp_size)``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, tp_rank: int = 0, tp_size: int = 1) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        self.shard_size = -(-num_embeddings // tp_size)
        self.vocab_start = tp_rank * self.shard_size
        # Rows of the real vocabulary in this shard (fewer than shard_size on a padded last rank).
        self.shard_rows = max(0, min(self.shard_size, num_embeddings - self.vocab_start))
        self.weight = nn.Parameter(torch.empty(self.shard_size, embedding_dim))
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor | QuantizedTensor) -> None:
        """Copy this rank's rows of the full table (or bias) ``loaded``; a quantized one stays quantized."""
        if loaded.shape[0] != self.num_embeddings or tuple(loaded.shape[1:]) != tuple(param.shape[1:]):
            raise ValueError(f"embedding shape {tuple(loaded.shape)} does not fit {tuple(param.shape)}")
        shard = loaded.narrow(0, self.vocab_start, self.shard_rows)
        if isinstance(shard, QuantizedTensor):
            quant_linear.store_rows(self, "weight", shard, 0, self.shard_size)
        else:
            param.data[: self.shard_rows].copy_(shard)
            param.data[self.shard_rows :].zero_()

    def _lookup(self, input_ids: torch.Tensor) -> torch.Tensor:
        if quant_linear.is_quantized(self.weight):
            return quant_linear.embedding(input_ids, self.weight)
        return F.embedding(input_ids, self.weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self._lookup(input_ids)
        local = input_ids - self.vocab_start
        in_range = (local >= 0) & (local < self.shard_size)
        out = self._lookup(local.clamp(0, self.shard_size - 1)) * in_range.unsqueeze(-1)
        torch.distributed.all_reduce(out)
        return out


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection to the vocabulary; logits come back in float32."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, bias: bool = False, tp_rank: int = 0, tp_size: int = 1
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, tp_rank, tp_size)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.shard_size))
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        else:
            self.register_parameter("bias", None)
        self._tied_to: VocabParallelEmbedding | None = None
        self._quant_bias: torch.Tensor | None = None  # fp32, for a quantized head

    def pack_weight(self) -> bool:
        """Keep a oneDNN-packed copy of the head for CPU bf16 matmuls (the largest one in small
        models); a quantized head is rearranged in place instead (``quant_linear.pack``)."""
        from local_engine.layers.linear import _pack

        if self._tied_to is not None:  # loading may have swapped the table for a quantized one
            self.weight = self._tied_to.weight
        if quant_linear.is_quantized(self.weight):
            quant_linear.pack(self.weight)
            self._quant_bias = None if self.bias is None else self.bias.detach().float().contiguous()
            return True
        self._packed = _pack(self.weight, self.bias)
        return self._packed is not None

    def tie(self, embedding: VocabParallelEmbedding) -> None:
        """Share the embedding table (``tie_word_embeddings``)."""
        self.weight = embedding.weight
        object.__setattr__(self, "_tied_to", embedding)  # a reference, not a second submodule

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        packed = getattr(self, "_packed", None)
        if quant_linear.is_quantized(self.weight):
            logits = quant_linear.linear(hidden, self.weight, self._quant_bias, out_dtype=torch.float32)
        elif packed is not None:
            from local_engine.layers.linear import packed_linear

            logits = packed_linear(hidden, packed, self.bias).float()
        else:
            logits = F.linear(hidden, self.weight, self.bias).float()
        if self.tp_size == 1:
            return logits
        parts = [torch.empty_like(logits) for _ in range(self.tp_size)]
        torch.distributed.all_gather(parts, logits)
        return torch.cat(parts, dim=-1)[..., : self.num_embeddings]
