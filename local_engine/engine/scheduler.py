"""Continuous batching: which sequences run this step, and how many tokens each computes.

Each step has a token budget (``max_num_batched_tokens``) and a cap on running sequences
(``max_num_seqs``). Running decodes go first (one token each, plus the draft tokens a speculating
sequence verifies), then running prefills continue in chunks, then waiting sequences are admitted
FCFS with whatever budget is left (chunked prefill mixed with decodes). When a decode needs a block
and none is free, the most recently admitted running sequence is preempted by recompute: its blocks
are freed and it goes back to the front of the waiting queue.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from local_engine.engine.block_manager import BlockManager
from local_engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class SchedulerOutput:
    """One step's batch: ``seqs[i]`` computes ``num_tokens[i]`` tokens from its ``num_computed_tokens``."""

    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


class Scheduler:
    """Owns the waiting queue and the running list; all mutation happens between model steps."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence, front: bool = False) -> None:
        seq.status = SequenceStatus.WAITING
        if front:
            self.waiting.appendleft(seq)
        else:
            self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        seq.spec_token_ids.clear()  # it prefills again; drafts only ride on a decode step
        self.block_manager.free(seq)
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.add(seq, front=True)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        preempted_before = self.num_preemptions

        # 1. Running decodes (one new token each, plus any draft tokens to verify); preempt from the
        # back when blocks run out. Drafts are trimmed to the budget and free blocks, never worth a
        # preemption.
        decoding = [s for s in self.running if s.num_uncomputed_tokens == 1]
        scheduled_ids: set[int] = set()
        for seq in decoding:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted by an earlier sequence in this loop
            drafts = seq.spec_token_ids
            if drafts:
                keep = min(len(drafts), budget - 1)
                if keep and not bm.can_append(seq, keep):
                    keep = 0
                del drafts[keep:]
            while not bm.can_append(seq):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            bm.append_slot(seq, len(drafts))
            out.seqs.append(seq)
            out.num_tokens.append(1 + len(drafts))
            scheduled_ids.add(seq.seq_id)
            budget -= 1 + len(drafts)

        # 2. Running prefills continue (their blocks were allocated at admission).
        for seq in self.running:
            if budget == 0:
                break
            if seq.seq_id in scheduled_ids:
                continue
            chunk = min(seq.num_uncomputed_tokens, budget)
            out.seqs.append(seq)
            out.num_tokens.append(chunk)
            budget -= chunk

        # 3. Admit waiting sequences FCFS while budget, sequence slots and blocks last.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not bm.can_allocate(seq):
                break
            self.waiting.popleft()
            bm.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            chunk = min(seq.num_uncomputed_tokens, budget)
            out.seqs.append(seq)
            out.num_tokens.append(chunk)
            budget -= chunk

        out.num_preempted = self.num_preemptions - preempted_before
        return out

    def finish(self, seq: Sequence) -> None:
        """Remove a finished (or aborted) sequence wherever it is and free its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass  # not queued yet (an n > 1 sibling waiting for its first sibling's prefill)
        if seq.block_table:
            self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
