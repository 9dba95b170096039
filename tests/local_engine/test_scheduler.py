"""Scheduler: token budget, chunked prefill mixed with decodes, max_num_seqs, preemption by recompute,
abort; plus a property test that random traffic with random aborts leaks no block."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from local_engine.engine.block_manager import BlockManager
from local_engine.engine.scheduler import Scheduler, SchedulerOutput
from local_engine.sampling_params import SamplingParams
from local_engine.sequence import Sequence, SequenceStatus


def make_seq(n_prompt: int, request_id: str, max_tokens: int = 8, base: int = 0) -> Sequence:
    return Sequence(request_id, 0, [base + i for i in range(n_prompt)], SamplingParams(max_tokens=max_tokens))


def finish_step(sched: Scheduler, out: SchedulerOutput, rng: random.Random | None = None) -> list[Sequence]:
    """Stand-in for the model step: advance computed tokens, sample a token where the prompt is done,
    finish on max_tokens. Returns the sequences that finished."""
    done = []
    for seq, n in zip(out.seqs, out.num_tokens, strict=True):
        seq.num_computed_tokens += n
        sched.block_manager.commit(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(rng.randrange(1000) if rng else 7)
            if seq.num_output_tokens >= (seq.params.max_tokens or 1):
                sched.finish(seq)
                done.append(seq)
    return done


def assert_no_leak(bm: BlockManager) -> None:
    assert bm.num_free_blocks == bm.num_blocks
    assert all(rc == 0 for rc in bm.ref_counts)


def test_chunked_prefill_respects_the_token_budget() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=8)
    seq = make_seq(20, "a")
    sched.add(seq)
    chunks = []
    while seq.num_output_tokens == 0:
        out = sched.schedule()
        chunks.append(out.num_tokens[0])
        assert out.total_tokens <= 8
        finish_step(sched, out)
    assert chunks == [8, 8, 4]


def test_decodes_go_first_then_prefill_chunks_share_the_step() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    a = make_seq(3, "a")
    sched.add(a)
    finish_step(sched, sched.schedule())  # a prefilled, now decoding
    b = make_seq(30, "b", base=100)
    sched.add(b)
    out = sched.schedule()
    assert out.seqs == [a, b]
    assert out.num_tokens == [1, 9]


def test_max_num_seqs_caps_the_running_set() -> None:
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    seqs = [make_seq(3, f"r{i}", base=10 * i) for i in range(4)]
    for s in seqs:
        sched.add(s)
    out = sched.schedule()
    assert out.seqs == seqs[:2]
    assert list(sched.waiting) == seqs[2:]


def test_preemption_by_recompute_when_blocks_run_out() -> None:
    # 4 blocks of 4 tokens; two sequences of 6 prompt tokens each take 2 blocks; decoding needs more.
    bm = BlockManager(4, 4, enable_prefix_caching=False)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    a, b = make_seq(6, "a", max_tokens=6), make_seq(6, "b", max_tokens=6, base=50)
    sched.add(a)
    sched.add(b)
    preempted = False
    steps = 0
    while sched.has_unfinished():
        out = sched.schedule()
        if out.num_preempted:
            preempted = True
            # The later arrival gave way and waits at the front, its cache freed.
            assert b.status is SequenceStatus.WAITING and b.block_table == [] and sched.waiting[0] is b
            assert a in out.seqs
        finish_step(sched, out)
        steps += 1
        assert steps < 100
    assert preempted
    assert a.num_output_tokens == 6 and b.num_output_tokens == 6
    assert_no_leak(bm)


def test_abort_frees_blocks_at_once() -> None:
    bm = BlockManager(16, 4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    a, b = make_seq(9, "a"), make_seq(5, "b", base=40)
    sched.add(a)
    sched.add(b)
    finish_step(sched, sched.schedule())
    sched.finish(a)
    assert a.block_table == [] and a.status is SequenceStatus.FINISHED
    assert a not in sched.running
    sched.finish(b)
    assert not sched.has_unfinished()
    assert_no_leak(bm)


def test_waiting_abort_is_removed_from_the_queue() -> None:
    bm = BlockManager(16, 4)
    sched = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=64)
    a, b = make_seq(5, "a"), make_seq(5, "b")
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.finish(b)
    assert list(sched.waiting) == []


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    num_blocks=st.integers(6, 40),
    block_size=st.sampled_from([2, 4, 8]),
    budget=st.integers(4, 64),
    max_seqs=st.integers(1, 8),
    prefix_caching=st.booleans(),
)
def test_random_traffic_with_aborts_leaks_no_block(
    seed: int, num_blocks: int, block_size: int, budget: int, max_seqs: int, prefix_caching: bool
) -> None:
    rng = random.Random(seed)
    bm = BlockManager(num_blocks, block_size, enable_prefix_caching=prefix_caching)
    sched = Scheduler(bm, max_num_seqs=max_seqs, max_num_batched_tokens=budget)
    capacity = (num_blocks - 1) * block_size  # every request must fit on its own
    live: list[Sequence] = []
    shared_prefix = [rng.randrange(50) for _ in range(12)]
    for step in range(200):
        if step < 120 and rng.random() < 0.4:
            n_prompt = rng.randrange(1, 24)
            max_tokens = rng.randrange(1, 12)
            if n_prompt + max_tokens <= capacity:
                prompt = (shared_prefix + [rng.randrange(50) for _ in range(24)])[:n_prompt]
                seq = Sequence(f"r{step}", 0, prompt, SamplingParams(max_tokens=max_tokens))
                sched.add(seq)
                live.append(seq)
        if live and rng.random() < 0.1:
            victim = live.pop(rng.randrange(len(live)))
            sched.finish(victim)
        out = sched.schedule()
        assert out.total_tokens <= budget
        assert len(sched.running) <= max_seqs
        for seq in out.seqs:
            assert seq.status is SequenceStatus.RUNNING
        for seq in finish_step(sched, out, rng):
            live.remove(seq)
        # Reference counts always equal the number of tables holding the block.
        holders = [0] * num_blocks
        for seq in sched.running:
            for b in seq.block_table:
                holders[b] += 1
        assert holders == bm.ref_counts
    for seq in live:
        sched.finish(seq)
    assert not sched.has_unfinished()
    assert_no_leak(bm)
