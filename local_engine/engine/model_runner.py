"""Runs one scheduled step: owns the model and its paged KV cache, builds the step's input tensors
and attention metadata, runs the model, computes logits only where a token is sampled, samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from local_engine.attention.metadata import AttentionMetadata
from local_engine.config import EngineConfig
from local_engine.engine.cuda_graph import DecodeGraphRunner
from local_engine.engine.kv_pool import lazy_zeros, log_memory
from local_engine.engine.scheduler import SchedulerOutput
from local_engine.layers.sampler import Sampler, SamplerOutput
from local_engine.loader import LoadedModel
from local_engine.sequence import Sequence

logger = logging.getLogger(__name__)

# The CPU pool's cap unless the config says otherwise: reserved, not committed (kv_pool.py).
_CPU_DEFAULT_KV_BYTES = 1 << 30


@dataclass(slots=True)
class StepInputs:
    """A step's flattened model inputs (on the model's device) and which rows get sampled."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    sample_indices: list[int]  # token rows whose logits are sampled
    sample_seqs: list[Sequence]  # per sampled row (a speculating sequence has 1 + drafts rows)
    # Per sampled row, the draft tokens before it (None: no sequence speculates this step).
    sample_drafts: list[list[int]] | None = None


@dataclass(slots=True)
class StepResult:
    seqs: list[Sequence]  # per sampled row, as ``StepInputs.sample_seqs``
    sampled: SamplerOutput


class ModelRunner:
    """Owns the model and the KV cache for one device."""

    def __init__(self, config: EngineConfig, loaded: LoadedModel) -> None:
        self.config = config
        self.model = loaded.model
        self.model_config = loaded.config
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype
        self.block_size = config.block_size
        self.max_model_len = config.context_length(self.model_config.max_position_embeddings)
        self.max_blocks_per_seq = -(-self.max_model_len // self.block_size)
        self.eos_token_ids = tuple(self.model_config.eos_token_ids)
        self.sampler = Sampler(config.seed)
        self.num_blocks = self._num_blocks()
        self.kv_caches = self._allocate_kv_cache(self.num_blocks)
        log_memory(
            self.model, self.num_blocks * self.bytes_per_block, self.num_blocks, self.device.type == "cpu"
        )
        # KERNELS (issue 7): pure-decode steps replay CUDA graphs, on CUDA unless enforce_eager.
        self.decode_graphs: DecodeGraphRunner | None = None
        # Soft-capped or windowed attention reads host metadata, which a captured graph cannot replay.
        windowed = self.model_config.needs_windowed_attention(self.max_model_len)
        if self.device.type == "cuda" and not config.enforce_eager and not windowed:
            self.decode_graphs = self._capture_decode_graphs()

    # -- KV cache --------------------------------------------------------------------------

    @property
    def bytes_per_block(self) -> int:
        mc = self.model_config
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * mc.num_hidden_layers * self.block_size * mc.num_key_value_heads * mc.head_dim * elem

    def _num_blocks(self) -> int:
        # Never more than every sequence at full length could use (+1 so a full batch never thrashes).
        useful = self.config.max_num_seqs * self.max_blocks_per_seq + 1
        if self.device.type == "cuda":
            budget = self._cuda_kv_budget()
        else:
            budget = self.config.kv_cache_memory_bytes or min(
                _CPU_DEFAULT_KV_BYTES, useful * self.bytes_per_block
            )
        num_blocks = min(budget // self.bytes_per_block, useful)
        if num_blocks < 1:
            raise ValueError(
                f"kv_cache_memory_bytes: {budget} bytes cannot hold one KV block "
                f"({self.bytes_per_block} bytes)"
            )
        logger.info(
            "KV cache: %d blocks of %d tokens (%.1f MiB)",
            num_blocks,
            self.block_size,
            num_blocks * self.bytes_per_block / 2**20,
        )
        return int(num_blocks)

    def _cuda_kv_budget(self) -> int:
        """Free memory times the utilisation target, after a profiling pass for activations."""
        if self.config.kv_cache_memory_bytes:
            return self.config.kv_cache_memory_bytes
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self._profile_run()
        torch.cuda.synchronize(self.device)
        activations = torch.cuda.max_memory_allocated(self.device) - before
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        used_elsewhere = total - free
        return int(total * self.config.gpu_memory_utilization - used_elsewhere - activations)

    @torch.inference_mode()
    def _profile_run(self) -> None:
        """A forward pass over a full token budget with an empty cache (the attention layers then
        attend within the step) to measure peak activation memory."""
        mc = self.model_config
        num_tokens = min(self.config.max_num_batched_tokens, self.max_model_len)
        empty = torch.empty(0, device=self.device, dtype=self.dtype)
        meta = AttentionMetadata(
            slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=self.device),
            query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=self.device),
            block_tables=torch.zeros((1, 1), dtype=torch.int32, device=self.device),
            max_query_len=num_tokens,
            max_seq_len=num_tokens,
            block_size=self.block_size,
            query_lens_cpu=[num_tokens],
            seq_lens_cpu=[num_tokens],
        )
        ids = torch.zeros(num_tokens, dtype=torch.int64, device=self.device)
        hidden = self.model(
            ids, torch.arange(num_tokens, device=self.device), [(empty, empty)] * mc.num_hidden_layers, meta
        )
        self.model.compute_logits(hidden[-min(num_tokens, self.config.max_num_seqs) :])

    def _allocate_kv_cache(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        mc = self.model_config
        shape = (num_blocks, self.block_size, mc.num_key_value_heads, mc.head_dim)
        # Zeroed, not empty: padded positions are masked, but 0 * NaN garbage would still be NaN.
        if self.device.type == "cpu":  # zero pages the OS commits only as blocks are written
            tensors = lazy_zeros(2 * mc.num_hidden_layers, shape, self.dtype)
            return list(zip(tensors[0::2], tensors[1::2], strict=True))
        return [
            (
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(mc.num_hidden_layers)
        ]

    # -- one step --------------------------------------------------------------------------

    def prepare(self, batch: SchedulerOutput) -> StepInputs:
        """Host-side lists for the whole batch, then one tensor per dtype copied to the device."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        sample_indices: list[int] = []
        sample_seqs: list[Sequence] = []
        sample_drafts: list[list[int]] | None = None
        tables: list[list[int]] = []
        query_lens: list[int] = []
        for seq, n in zip(batch.seqs, batch.num_tokens, strict=True):
            start = seq.num_computed_tokens
            end = start + n
            table = seq.block_table
            if seq.spec_token_ids:
                if sample_drafts is None:
                    sample_drafts = [[] for _ in sample_seqs]
                drafts = seq.spec_token_ids
                # A speculating decode (its last token, then its drafts) enters attention as one decode
                # row per token over the same blocks, each seeing one position more: every row is then
                # computed exactly as a plain decode step would, so accepted tokens match plain greedy.
                for j, token_id in enumerate([seq.token_ids[start], *drafts]):
                    pos = start + j
                    input_ids.append(token_id)
                    positions.append(pos)
                    slots.append(table[pos // bs] * bs + pos % bs)
                    query_start.append(query_start[-1] + 1)
                    query_lens.append(1)
                    seq_lens.append(pos + 1)
                    tables.append(table)
                    sample_indices.append(query_start[-1] - 1)
                    sample_seqs.append(seq)
                    sample_drafts.append(drafts[:j])
                continue
            if n == 1:
                input_ids.append(seq.token_ids[start])
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
            else:
                input_ids.extend(seq.token_ids[start:end])
                positions.extend(range(start, end))
                pos = start
                while pos < end:  # whole runs of slots per block
                    block_end = min(end, (pos // bs + 1) * bs)
                    base = table[pos // bs] * bs - (pos // bs) * bs
                    slots.extend(range(base + pos, base + block_end))
                    pos = block_end
            query_start.append(query_start[-1] + n)
            query_lens.append(n)
            seq_lens.append(end)
            tables.append(table)
            if end == seq.num_tokens:
                sample_indices.append(query_start[-1] - 1)
                sample_seqs.append(seq)
                if sample_drafts is not None:
                    sample_drafts.append([])
        width = -(-max(seq_lens) // bs)
        num_seqs = len(seq_lens)
        flat_tables: list[int] = []
        for table in tables:
            row = table[:width]
            flat_tables.extend(row)
            if len(row) < width:
                flat_tables.extend([0] * (width - len(row)))
        num_tokens = len(input_ids)
        longs = torch.tensor(input_ids + positions + slots, dtype=torch.int64)
        ints = torch.tensor(query_start + seq_lens + flat_tables, dtype=torch.int32)
        if self.device.type != "cpu":
            longs = longs.pin_memory().to(self.device, non_blocking=True)
            ints = ints.pin_memory().to(self.device, non_blocking=True)
        meta = AttentionMetadata(
            slot_mapping=longs[2 * num_tokens :],
            query_start_loc=ints[: num_seqs + 1],
            seq_lens=ints[num_seqs + 1 : 2 * num_seqs + 1],
            block_tables=ints[2 * num_seqs + 1 :].view(num_seqs, width),
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            block_size=bs,
            query_lens_cpu=query_lens,
            seq_lens_cpu=seq_lens,
        )
        return StepInputs(
            longs[:num_tokens],
            longs[num_tokens : 2 * num_tokens],
            meta,
            sample_indices,
            sample_seqs,
            sample_drafts,
        )

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """The model call (hidden states ``[T, H]``). CUDA graph replay for pure-decode batches plugs in
        here: ``inputs.meta.is_pure_decode`` batches have one token per sequence."""
        # KERNELS (issue 7): replay the captured graph of the smallest bucket that fits the batch.
        graphs, meta = self.decode_graphs, inputs.meta
        if graphs is not None and meta.is_pure_decode and graphs.bucket_for(meta.num_seqs) is not None:
            return graphs.run(
                inputs.input_ids, inputs.positions, meta.slot_mapping, meta.seq_lens, meta.block_tables
            )
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta)

    def _capture_decode_graphs(self) -> DecodeGraphRunner | None:
        """KERNELS (issue 7): capture decode graphs over the allocated KV cache; eager on failure."""
        runner = DecodeGraphRunner(
            model=self.model,
            kv_caches=self.kv_caches,
            hidden_size=self.model_config.hidden_size,
            dtype=self.dtype,
            device=self.device,
            block_size=self.block_size,
            max_blocks_per_seq=self.max_blocks_per_seq,
            max_seq_len_bound=self.max_model_len,
            max_num_seqs=self.config.max_num_seqs,
        )
        try:
            runner.capture()
        except Exception:  # e.g. an op that synchronises inside the captured region
            logger.exception("CUDA graph capture failed; decode steps run eagerly")
            return None
        logger.info("CUDA graphs captured for decode batch sizes %s", runner.buckets)
        return runner

    @torch.inference_mode()
    def execute(self, batch: SchedulerOutput) -> StepResult:
        inputs = self.prepare(batch)
        hidden = self.forward(inputs)
        if not inputs.sample_seqs:
            return StepResult([], SamplerOutput([], []))
        if len(inputs.sample_indices) != hidden.shape[0]:
            index = torch.tensor(inputs.sample_indices, dtype=torch.int64)
            hidden = hidden[index.to(hidden.device)]
        logits = self.model.compute_logits(hidden)
        sampled = self.sampler(logits, inputs.sample_seqs, self.eos_token_ids, inputs.sample_drafts)
        return StepResult(inputs.sample_seqs, sampled)
