"""One sequence being generated: its tokens, KV-cache progress, block table and output state.

A request with ``n > 1`` owns ``n`` sibling sequences (``index`` 0..n-1) over the same prompt.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from local_engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from local_engine.engine.ngram_proposer import NgramIndex
    from local_engine.engine.outputs import TokenLogprob
    from local_engine.structured.guide import Guide

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Sequence:
    """Scheduling and output state of one sequence.

    ``token_ids`` is prompt + generated tokens. ``num_computed_tokens`` counts the tokens whose K/V
    is in the cache (so the last sampled token is not computed until the next step feeds it);
    ``num_cached_tokens`` of those came from prefix-cache hits at admission.
    """

    request_id: str
    index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    token_ids: list[int] = field(default_factory=list)
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    # Prefix-cache chain hashes of this sequence's full blocks (computed lazily), and how many of
    # its leading full blocks are registered in the cache.
    block_hashes: list[int] = field(default_factory=list)
    num_registered_blocks: int = 0
    generator: torch.Generator | None = None
    # Output state, owned by the engine.
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    text: str = ""
    emitted_text_len: int = 0
    logprobs: list[TokenLogprob] | None = None
    detokenizer: object | None = None
    # Constrained decoding: the grammar state that masks this sequence's logits (None: free).
    guide: Guide | None = None
    num_preemptions: int = 0
    # Speculative decoding: draft tokens to check after the last token in the next step (never in
    # ``token_ids`` until accepted), and the prompt-lookup index they come from.
    spec_token_ids: list[int] = field(default_factory=list)
    ngram_index: NgramIndex | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)
        if self.params.seed is not None:
            # Each sibling gets its own stream, reproducible from the request seed.
            self.generator = torch.Generator().manual_seed(self.params.seed + self.index)
        if self.params.logprobs is not None:
            self.logprobs = []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
