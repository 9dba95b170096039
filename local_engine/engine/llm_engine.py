"""The synchronous engine: requests in, one scheduled model step per ``step()``, outputs out.

Output handling per sampled token: append, detokenize incrementally, then finish on EOS, a stop
token id, ``max_tokens``/context length, or a stop string (found across token boundaries; text that
could still be the start of a stop string is held back until it can't).

Speculative decoding by prompt lookup (``config.speculative_decoding``): before a step, each
decoding sequence may get draft tokens from ``NgramProposer``; the step computes its last token and
the drafts together (as decode rows, ``ModelRunner.prepare``) and samples a token after each, as
a plain step would. Drafts are accepted while they equal what was sampled before them, then the
token sampled after the last accepted one is kept. Greedy: exactly the tokens plain decoding makes.
Temperature sampling: a draft is one fixed token, so accepting it when the model's own sample
equals it (probability p(draft)) and otherwise keeping that sample (drawn from p without the
draft) is exactly rejection sampling for such a draft; every kept token is distributed as without
speculation. Accepted tokens go through the same per-token append (stopping at the first finish),
and only their positions count as computed, each with its own row's logprobs. Penalties and
min_tokens count a row's earlier drafts as generated (``Sampler``). Requests with a grammar (whose
state advances token by token) or a seed (whose draws must not depend on speculation) do not
speculate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from local_engine.config import EngineConfig
from local_engine.detokenizer import IncrementalDetokenizer
from local_engine.distributed.executor import make_runner
from local_engine.engine.block_manager import BlockManager
from local_engine.engine.heap import release_free_heap
from local_engine.engine.ngram_proposer import NgramIndex, NgramProposer
from local_engine.engine.outputs import CompletionOutput, RequestOutput, RequestTimes, TokenLogprob
from local_engine.engine.scheduler import Scheduler
from local_engine.engine.stats import EngineSnapshot, EngineStats
from local_engine.layers.sampler import SamplerOutput
from local_engine.loader import LoadedModel, load_model
from local_engine.sampling_params import SamplingParams
from local_engine.sequence import Sequence
from local_engine.structured import GuideFactory

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    # n > 1: siblings wait until sequence 0 has computed the prompt, then reuse its cached blocks.
    pending_siblings: list[Sequence] = field(default_factory=list)
    times: RequestTimes = field(default_factory=lambda: RequestTimes(time.monotonic()))
    max_stop_len: int = 0

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)


@dataclass(slots=True)
class _Reported:
    """Per sequence: how much text and how many tokens were already handed out."""

    text_len: int = 0
    num_tokens: int = 0


class LLMEngine:
    """Owns the scheduler, block manager and model runner; not thread-safe (one caller at a time)."""

    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        if config.device == "cpu":
            torch.set_num_threads(config.threads())
        if loaded is None:
            loaded = load_model(
                config.model,
                dtype=config.torch_dtype,
                device=config.device,
                quantized=config.keep_quantized,
                quantization=config.quantization,
                tp_size=config.tensor_parallel_size,
            )
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.model_name = loaded.config.name
        self.runner = make_runner(config, loaded)
        self.max_model_len = self.runner.max_model_len
        self.block_manager = BlockManager(
            self.runner.num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.eos_token_ids = frozenset(loaded.config.eos_token_ids)
        self.guides = GuideFactory(self.tokenizer, loaded.config.vocab_size, self.eos_token_ids)
        self.requests: dict[str, _Request] = {}
        self._reported: dict[int, _Reported] = {}
        self.num_steps = 0
        self.stats = EngineStats()
        self.proposer: NgramProposer | None = None
        if config.speculative_decoding:
            self.proposer = NgramProposer(
                config.num_speculative_tokens, config.prompt_lookup_min, config.prompt_lookup_max
            )
        if config.warmup:
            self.warmup()
        release_free_heap()  # the loader's and warm-up's freed buffers

    # -- requests ----------------------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None
    ) -> None:
        """Queue a request. Raises ``ValueError`` for a prompt that can never run."""
        params = params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request_id: {request_id!r} is already running")
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not prompt_ids:
            raise ValueError("prompt: must not be empty")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(prompt_ids)} tokens leave no room to generate within max_model_len "
                f"{self.max_model_len}"
            )
        vocab = self.loaded.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError(f"prompt: token ids must be in [0, {vocab})")
        if self.block_manager.blocks_needed(len(prompt_ids) + 1) > self.block_manager.num_blocks:
            raise ValueError(f"prompt: {len(prompt_ids)} tokens do not fit in the KV cache")
        seqs = [Sequence(request_id, i, prompt_ids, params) for i in range(params.n)]
        for seq in seqs:
            if params.grammar is not None:
                seq.guide = self.guides.new(params.grammar)
            seq.detokenizer = IncrementalDetokenizer(
                self.tokenizer, skip_special_tokens=params.skip_special_tokens, prompt_token_ids=prompt_ids
            )
            self._reported[seq.seq_id] = _Reported()
        request = _Request(request_id, prompt_ids, params, seqs, pending_siblings=seqs[1:])
        request.max_stop_len = max((len(s) for s in params.stop), default=0)
        self.requests[request_id] = request
        self.scheduler.add(seqs[0])

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks. Returns its final output (``finish_reason``
        "abort" on every unfinished completion), or None if it is unknown or already done."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        for seq in request.seqs:
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
            self.scheduler.finish(seq)
        request.times.finished = time.monotonic()
        output = self._make_output(request)
        for seq in request.seqs:
            self._reported.pop(seq.seq_id, None)
        return output

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- the step ------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule and run one model step; returns an output for every request that progressed."""
        if self.proposer is not None:
            self._propose(self.proposer)
        batch = self.scheduler.schedule()
        if batch.is_empty:
            if self.scheduler.waiting and not self.scheduler.running:
                # Cannot happen while add_request's size check holds; never spin silently.
                raise RuntimeError("the waiting request cannot be scheduled into an empty KV cache")
            return []
        started = time.monotonic()
        result = self.runner.execute(batch)
        now = time.monotonic()
        self.num_steps += 1
        bm = self.block_manager
        requests = self.requests
        for seq, n in zip(batch.seqs, batch.num_tokens, strict=True):
            if not seq.spec_token_ids:  # a speculating sequence counts what it accepts, below
                seq.num_computed_tokens += n
                bm.commit(seq)
            times = requests[seq.request_id].times
            if times.scheduled is None:
                times.scheduled = started
        touched: dict[str, _Request] = {}
        sampled = result.sampled
        rows, num_rows = result.seqs, len(result.seqs)
        generated = 0
        row = 0
        while row < num_rows:
            seq = rows[row]
            request = requests[seq.request_id]
            if request.times.first_token is None:
                request.times.first_token = now
            if seq.spec_token_ids:
                row, appended = self._verify(request, seq, sampled, row)
            else:
                self._append_token(request, seq, sampled.token_ids[row], sampled.logprobs[row])
                row, appended = row + 1, 1
            generated += appended
            if seq.finish_reason is not None:
                self.scheduler.finish(seq)
            if request.pending_siblings and seq.index == 0:
                for sibling in reversed(request.pending_siblings):
                    self.scheduler.add(sibling, front=True)
                request.pending_siblings = []
            touched[request.request_id] = request
        self.stats.generated(now, generated)
        for request in touched.values():
            if request.finished:
                self._finished(request, now)
        outputs = [self._make_output(r) for r in touched.values()]
        for request in touched.values():
            if request.finished:
                del self.requests[request.request_id]
                for seq in request.seqs:
                    self._reported.pop(seq.seq_id, None)
        return outputs

    def _propose(self, proposer: NgramProposer) -> None:
        """Give each decoding sequence its draft tokens for the next step, while the running batch is
        small enough that verifying them costs about as little as one token."""
        running = self.scheduler.running
        if len(running) > self.config.speculative_max_batch:
            for seq in running:
                if seq.spec_token_ids:  # left by a step whose token budget ran out before it
                    seq.spec_token_ids = []
            return
        for seq in running:
            seq.spec_token_ids = []
            if seq.num_uncomputed_tokens != 1:
                continue
            p = seq.params
            # A seed's stream of draws stays the same whatever the batch does; a grammar's state
            # advances token by token.
            if p.seed is not None or seq.guide is not None:
                continue
            # Room for the drafts and the token sampled after them, within max_tokens and the context.
            limit = self.max_model_len - seq.num_tokens
            if p.max_tokens is not None:
                limit = min(limit, p.max_tokens - seq.num_output_tokens - 1)
            if seq.ngram_index is None:
                seq.ngram_index = NgramIndex()
            seq.spec_token_ids = proposer.propose(seq.ngram_index, seq.token_ids, limit)

    def _verify(
        self, request: _Request, seq: Sequence, sampled: SamplerOutput, row: int
    ) -> tuple[int, int]:
        """Accept ``seq``'s drafts while each equals the token sampled before it, append the accepted
        ones and the token sampled after them (stopping at a finish), roll the rest back. Rows
        ``row:`` of ``sampled`` hold its 1 + drafts rows; returns the next row and the tokens appended."""
        drafts = seq.spec_token_ids
        tokens = sampled.token_ids[row : row + len(drafts) + 1]
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == tokens[accepted]:
            accepted += 1
        self.stats.speculated(len(drafts), accepted)
        appended = 0
        for j, token_id in enumerate(tokens[: accepted + 1]):
            self._append_token(request, seq, token_id, sampled.logprobs[row + j])
            appended += 1
            if seq.finish_reason is not None:
                break
        # K/V is valid for the last token and the accepted drafts: the rejected positions' slots are
        # rewritten when the sequence gets there, and their spare blocks go back now.
        seq.num_computed_tokens += appended
        seq.spec_token_ids = []
        self.block_manager.commit(seq)
        if seq.finish_reason is None:
            self.block_manager.trim(seq)
        return row + len(drafts) + 1, appended

    def _finished(self, request: _Request, now: float) -> None:
        times = request.times
        times.finished = now
        # Time per output token after the first, over the request's first completion.
        made = request.seqs[0].num_output_tokens
        tpot = None
        if made > 1 and times.first_token is not None:
            tpot = (now - times.first_token) / (made - 1)
        self.stats.finished(tpot)

    def snapshot(self) -> EngineSnapshot:
        """The engine's state and totals now (safe to call from another thread between steps or
        during one: every field is a plain read)."""
        stats, bm = self.stats, self.block_manager
        return EngineSnapshot(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_used=bm.num_blocks - bm.num_free_blocks,
            kv_blocks_total=bm.num_blocks,
            prefix_cache_query_tokens=bm.prefix_cache_queries,
            prefix_cache_hit_tokens=bm.prefix_cache_hits,
            generation_tokens=stats.generation_tokens,
            finished_requests=stats.finished_requests,
            tpot_counts=tuple(stats.tpot_counts),
            tpot_sum=stats.tpot_sum,
            generation_tokens_per_s=stats.tokens_per_s(time.monotonic()),
            spec_drafts=stats.spec_drafts,
            spec_draft_tokens=stats.spec_draft_tokens,
            spec_accepted_tokens=stats.spec_accepted_tokens,
        )

    def _append_token(
        self,
        request: _Request,
        seq: Sequence,
        token_id: int,
        logprob: tuple[float, list[tuple[int, float]]] | None,
    ) -> None:
        p = request.params
        seq.token_ids.append(token_id)
        if logprob is not None and seq.logprobs is not None:
            chosen, top = logprob
            seq.logprobs.append(
                TokenLogprob(
                    token_id,
                    self._token_text(token_id),
                    chosen,
                    [(t, self._token_text(t), v) for t, v in top],
                )
            )
        detok = seq.detokenizer
        assert isinstance(detok, IncrementalDetokenizer)
        prev_len = len(seq.text)
        seq.text += detok.push(token_id)
        num_out = seq.num_output_tokens
        guide = seq.guide
        if guide is not None and token_id not in self.eos_token_ids:
            if not guide.accept(token_id):
                # Only when another mask (min_tokens) left the grammar no token; never emit past it.
                logger.warning("request %s left its grammar: %s", request.request_id, guide.error)
                seq.finish_reason = "stop"
            elif guide.finished:
                # The grammar is complete: end now rather than spend a step sampling EOS.
                seq.finish_reason = "stop"
        if seq.finish_reason is None and num_out >= p.min_tokens:
            if token_id in self.eos_token_ids and not p.ignore_eos:
                seq.finish_reason = "stop"
            elif token_id in p.stop_token_ids:
                seq.finish_reason, seq.stop_reason = "stop", token_id
        if seq.finish_reason is None and (
            (p.max_tokens is not None and num_out >= p.max_tokens)
            or seq.num_tokens >= self.max_model_len
            # The next step would need more KV blocks than the whole cache holds.
            or self.block_manager.blocks_needed(seq.num_tokens) > self.block_manager.num_blocks
        ):
            seq.finish_reason = "length"
        if seq.finish_reason is not None:
            seq.text += detok.flush()
        if p.stop and num_out >= p.min_tokens and len(seq.text) > prev_len:
            self._check_stop_strings(request, seq, prev_len)

    def _check_stop_strings(self, request: _Request, seq: Sequence, prev_len: int) -> None:
        p = request.params
        start = max(0, prev_len - request.max_stop_len + 1)
        best: tuple[int, str] | None = None
        for stop in p.stop:
            idx = seq.text.find(stop, start)
            if idx >= 0 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is not None:
            idx, stop = best
            seq.text = seq.text[: idx + len(stop)] if p.include_stop_str_in_output else seq.text[:idx]
            seq.finish_reason, seq.stop_reason = "stop", stop

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    @staticmethod
    def _held_back(text: str, stops: list[str]) -> int:
        """Length of the longest suffix of ``text`` that may still grow into a stop string."""
        hold = 0
        for stop in stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        return hold

    def _make_output(self, request: _Request) -> RequestOutput:
        outputs: list[CompletionOutput] = []
        stops = request.params.stop
        for seq in request.seqs:
            reported = self._reported.setdefault(seq.seq_id, _Reported())
            visible = len(seq.text)
            if stops and seq.finish_reason is None:
                visible -= self._held_back(seq.text, stops)
            visible = max(visible, reported.text_len)
            delta = seq.text[reported.text_len : visible]
            num_out = seq.num_output_tokens
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text=seq.text[:visible],
                    text_delta=delta,
                    token_ids=seq.output_token_ids,
                    finish_reason=seq.finish_reason,
                    logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                    stop_reason=seq.stop_reason,
                    num_new_tokens=num_out - reported.num_tokens,
                )
            )
            reported.text_len, reported.num_tokens = visible, num_out
        return RequestOutput(
            request.request_id,
            request.prompt_token_ids,
            outputs,
            finished=request.finished,
            num_cached_tokens=request.seqs[0].num_cached_tokens,
            times=request.times,
        )

    # -- housekeeping ----------------------------------------------------------------------------

    def warmup(self) -> None:
        """One short request through the whole path (allocations, kernels), then a clean cache."""
        vocab = self.loaded.config.vocab_size
        prompt = [(i * 7 + 3) % vocab for i in range(min(16, self.max_model_len - 2))]
        self.add_request("__warmup__", prompt, SamplingParams(temperature=0.0, max_tokens=2))
        while "__warmup__" in self.requests:
            self.step()
        self.block_manager.reset_prefix_cache()
        self.num_steps = 0
        self.stats = EngineStats()  # the warmup request is no one's
