"""CUDA graphs for decode steps, one per padded batch-size bucket.

A decode step is ``num_seqs`` single-token queries. The model forward for such a step launches a
few hundred small kernels; replaying a captured graph removes the per-launch CPU cost, which
dominates at small batch sizes. One graph is captured per bucket in ``BATCH_BUCKETS`` (up to
``max_num_seqs``); a step with ``n`` sequences replays the smallest bucket ``b >= n`` with the
rows ``n..b`` padded as inert sequences (slot ``-1``: nothing written; ``seq_len`` 0: nothing read,
the kernels produce zeros for them).

Graph safety, relied on by what is captured:

* every input lives in a static buffer allocated once here; ``run`` copies the step's inputs into
  them (host-to-device copies issued without synchronising) and replays;
* the attention metadata holds views of those buffers and only host ints that are fixed per
  bucket: ``max_query_len = 1`` and ``max_seq_len = max_seq_len_bound`` (a bound, e.g.
  ``max_model_len``: the kernels read each sequence's real length from ``seq_lens`` on the device);
* the Triton attention backend issues no host synchronisation and its grid depends on shapes only.

``use_graphs=False`` runs the same padded static-buffer step eagerly (CPU, ``enforce_eager``), so the
buffer and padding logic is the same code on every device.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from local_engine.attention.metadata import AttentionMetadata

BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)

ModelForward = Callable[[torch.Tensor, torch.Tensor, list, AttentionMetadata], torch.Tensor]


@dataclass
class _StaticInputs:
    input_ids: torch.Tensor  # [B] int64
    positions: torch.Tensor  # [B] int64
    slot_mapping: torch.Tensor  # [B] int64
    seq_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32
    query_start_loc: torch.Tensor  # [B + 1] int32, always 0..B (one token per sequence)


@dataclass
class DecodeGraphRunner:
    """Captures and replays decode steps of ``model`` over ``kv_caches``.

    ``model(input_ids, positions, kv_caches, meta) -> hidden [T, H]`` is the engine's model contract.
    Call ``capture()`` once after the KV cache exists (and before serving), then ``run(...)`` per
    decode step with ``num_seqs <= max_batch_size``.
    """

    model: ModelForward
    kv_caches: list
    hidden_size: int
    dtype: torch.dtype
    device: torch.device
    block_size: int
    max_blocks_per_seq: int
    max_seq_len_bound: int
    max_num_seqs: int = 256
    use_graphs: bool = True
    buckets: tuple[int, ...] = field(init=False)
    _inputs: _StaticInputs = field(init=False)
    _graphs: dict[int, torch.cuda.CUDAGraph] = field(init=False, default_factory=dict)
    _outputs: dict[int, torch.Tensor] = field(init=False, default_factory=dict)
    _pool: object = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device; pass use_graphs=False elsewhere")
        # Power-of-two buckets below max_num_seqs, then max_num_seqs itself (capped at the largest bucket);
        # bigger steps run eagerly.
        top = min(self.max_num_seqs, BATCH_BUCKETS[-1])
        self.buckets = (*(b for b in BATCH_BUCKETS if b < top), top)
        size = self.buckets[-1]
        dev = self.device
        self._inputs = _StaticInputs(
            input_ids=torch.zeros(size, dtype=torch.int64, device=dev),
            positions=torch.zeros(size, dtype=torch.int64, device=dev),
            slot_mapping=torch.full((size,), -1, dtype=torch.int64, device=dev),
            seq_lens=torch.zeros(size, dtype=torch.int32, device=dev),
            block_tables=torch.zeros(size, self.max_blocks_per_seq, dtype=torch.int32, device=dev),
            query_start_loc=torch.arange(size + 1, dtype=torch.int32, device=dev),
        )

    @property
    def max_batch_size(self) -> int:
        return self.buckets[-1]

    def bucket_for(self, num_seqs: int) -> int | None:
        """The padded batch size a step of ``num_seqs`` runs at (None: too big, run it eagerly)."""
        i = bisect.bisect_left(self.buckets, num_seqs)
        return self.buckets[i] if i < len(self.buckets) else None

    def _meta(self, batch: int) -> AttentionMetadata:
        inp = self._inputs
        return AttentionMetadata(
            slot_mapping=inp.slot_mapping[:batch],
            query_start_loc=inp.query_start_loc[: batch + 1],
            seq_lens=inp.seq_lens[:batch],
            block_tables=inp.block_tables[:batch],
            max_query_len=1,
            max_seq_len=self.max_seq_len_bound,
            block_size=self.block_size,
        )

    def _forward(self, batch: int) -> torch.Tensor:
        inp = self._inputs
        return self.model(inp.input_ids[:batch], inp.positions[:batch], self.kv_caches, self._meta(batch))

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture one graph per bucket, largest first so smaller ones reuse its memory pool.

        Each bucket runs once eagerly first: Triton compiles its kernels then, outside the capture.
        Padding rows (all of them, during capture) write nothing and read nothing.
        """
        if not self.use_graphs:
            return
        self._inputs.slot_mapping.fill_(-1)
        self._inputs.seq_lens.zero_()
        for batch in reversed(self.buckets):
            self._forward(batch)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            # torch.cuda.graph captures on its own side stream and synchronises around the capture.
            with torch.cuda.graph(graph, pool=self._pool):
                out = self._forward(batch)
            if self._pool is None:
                self._pool = graph.pool()
            self._graphs[batch] = graph
            self._outputs[batch] = out
        torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        seq_lens: torch.Tensor,
        block_tables: torch.Tensor,
    ) -> torch.Tensor:
        """One decode step for ``n = len(input_ids)`` sequences -> hidden ``[n, hidden_size]``.

        Inputs may live on the host (pinned memory makes the copies asynchronous) or the device;
        ``block_tables`` is ``[n, w]`` with ``w <= max_blocks_per_seq``. The returned tensor is a
        view of the graph's output buffer: consume it before the next ``run``.
        """
        n = input_ids.shape[0]
        batch = self.bucket_for(n)
        if batch is None:
            raise ValueError(f"{n} sequences exceed the largest captured batch ({self.max_batch_size})")
        width = block_tables.shape[1]
        if width > self.max_blocks_per_seq:
            raise ValueError(
                f"block tables of width {width} exceed max_blocks_per_seq {self.max_blocks_per_seq}"
            )
        inp = self._inputs
        inp.input_ids[:n].copy_(input_ids, non_blocking=True)
        inp.positions[:n].copy_(positions, non_blocking=True)
        inp.slot_mapping[:n].copy_(slot_mapping, non_blocking=True)
        inp.seq_lens[:n].copy_(seq_lens, non_blocking=True)
        # Columns past ``width`` keep stale ids: never read, since seq_lens bound every table lookup.
        inp.block_tables[:n, :width].copy_(block_tables, non_blocking=True)
        if batch > n:  # padding rows: write nothing, read nothing
            inp.slot_mapping[n:batch].fill_(-1)
            inp.seq_lens[n:batch].zero_()
        graph = self._graphs.get(batch)
        if graph is None:
            if self.use_graphs:
                raise RuntimeError("capture() has not been called")
            return self._forward(batch)[:n]
        graph.replay()
        return self._outputs[batch][:n]
