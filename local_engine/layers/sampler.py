"""Batched sampling with per-request parameters.

Order (as vLLM): raw logprobs are taken from the model's logits; then a guided sequence's grammar
masks the tokens it does not allow next, min_tokens masks EOS/stop ids,
penalties (repetition over prompt + output, presence/frequency over output) adjust the logits;
greedy rows take the argmax; the others are divided by their temperature, filtered by top_k /
top_p / min_p (sorting only each row's best candidates) and drawn by inverse CDF with one uniform
per row, which a seeded request takes from its own ``torch.Generator`` so it is reproducible
whatever else shares the batch. An all-greedy batch without penalties is one ``argmax``.
(The exponential race used before, ``argmax(p / q)`` with ``q ~ Exp(1)``, drew a random number
per vocabulary entry: 12 ms of a 16-row step on SmolLM2, against 0.5 ms for softmax + cumsum.)

Speculative decoding samples several rows of one sequence in a step, row ``j`` after its first ``j``
draft tokens: ``drafts[i]`` names those for row ``i``, and penalties and min_tokens count them as
already generated, so each row is sampled exactly as a plain step would once they were accepted.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from local_engine.sequence import Sequence
from local_engine.structured.guide import apply_bitmask


@dataclass(slots=True)
class SamplerOutput:
    """Per sampled sequence: the token and, when asked for, its raw logprob and the top-k raw logprobs."""

    token_ids: list[int]
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]


def _min_tokens_mask(
    logits: torch.Tensor, seqs: Seq[Sequence], eos_token_ids: Seq[int], drafts: Seq[Seq[int]]
) -> None:
    rows: list[int] = []
    cols: list[int] = []
    for i, seq in enumerate(seqs):
        p = seq.params
        if p.min_tokens and seq.num_output_tokens + len(drafts[i]) < p.min_tokens:
            banned = set(p.stop_token_ids)
            banned.update(eos_token_ids)
            rows.extend([i] * len(banned))
            cols.extend(banned)
    if rows:
        logits[torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)] = float(
            "-inf"
        )


def _grammar_mask(logits: torch.Tensor, seqs: Seq[Sequence], rows: list[int]) -> None:
    words = (logits.shape[1] + 31) // 32
    bitmask = torch.empty((len(rows), words), dtype=torch.int32)
    for j, i in enumerate(rows):
        guide = seqs[i].guide
        assert guide is not None
        guide.fill(bitmask[j])
    apply_bitmask(logits, rows, bitmask)


def _apply_penalties(logits: torch.Tensor, seqs: Seq[Sequence], drafts: Seq[Seq[int]]) -> None:
    n, vocab = logits.shape
    outputs = [s.output_token_ids + list(d) for s, d in zip(seqs, drafts, strict=True)]
    width = max(1, max(len(o) for o in outputs))
    # Pad with an out-of-vocab column that is dropped afterwards.
    dev = logits.device
    padded = torch.tensor([o + [vocab] * (width - len(o)) for o in outputs], dtype=torch.long, device=dev)
    counts = torch.zeros(n, vocab + 1, dtype=logits.dtype, device=dev)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=logits.dtype))
    counts = counts[:, :vocab]

    def column(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=logits.dtype, device=dev).unsqueeze(1)

    rep = column([s.params.repetition_penalty for s in seqs])
    if bool((rep != 1.0).any()):
        prompts = [s.prompt_token_ids for s in seqs]
        pwidth = max(1, max(len(p) for p in prompts))
        ppad = torch.tensor([p + [vocab] * (pwidth - len(p)) for p in prompts], dtype=torch.long, device=dev)
        seen = torch.zeros(n, vocab + 1, dtype=torch.bool, device=dev)
        seen.scatter_(1, ppad, True)
        seen = seen[:, :vocab] | (counts > 0)
        penalised = torch.where(logits > 0, logits / rep, logits * rep)
        logits.copy_(torch.where(seen, penalised, logits))
    freq = column([s.params.frequency_penalty for s in seqs])
    pres = column([s.params.presence_penalty for s in seqs])
    logits.sub_(freq * counts + pres * (counts > 0).to(logits.dtype))


# Filtered rows are sorted only as far as their filters can keep: torch.topk of this many
# candidates, widened (x4) while some row keeps its last candidate. top_p 0.9 at the model card's
# temperature 0.2 keeps a few dozen of SmolLM2's 49,152 tokens. Measured on 16 such rows, 2 threads:
# a full sort 21 ms a step, topk(64) 0.65 ms.
_FIRST_CANDIDATES = 64
# float32's exp turns subnormal below about -87, and x86 computes those many times slower: at
# temperature 0.2 SmolLM2's logits spread over hundreds, and torch.logsumexp over 16 rows took
# 7.6-8.6 ms a step, against 0.22 ms for the same exp with its arguments floored here (softmax,
# and exp of -inf, are slow the same way). A token's share moves by less than e^-80.
_EXP_FLOOR = -80.0


def _exp_shifted(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(x - row max)``, arguments floored at ``_EXP_FLOOR`` and exactly 0 where ``x`` is
    -inf (a masked token); and the row max."""
    top = x.amax(dim=-1, keepdim=True)
    weights = (x - top).clamp_(min=_EXP_FLOOR).exp_()
    return weights.masked_fill_(x == float("-inf"), 0.0), top


def _keep(values: torch.Tensor, full_lse: torch.Tensor, seqs: Seq[Sequence], vocab: int) -> torch.Tensor:
    """Which of the descending ``values`` (each row's best logits, temperature-scaled) survive top_k,
    then top_p (over the top_k-truncated distribution), then min_p (relative to the best token)."""
    dev = values.device
    top_k = torch.tensor([s.params.top_k if s.params.top_k > 0 else vocab for s in seqs], device=dev)
    ranks = torch.arange(values.shape[1], device=dev).unsqueeze(0)
    keep = ranks < top_k.unsqueeze(1)
    top_p = torch.tensor([s.params.top_p for s in seqs], dtype=values.dtype, device=dev).unsqueeze(1)
    if bool((top_p < 1.0).any()):
        kept = values.masked_fill(~keep, float("-inf"))
        # A row cut by top_k renormalises over what it kept (all among the candidates); others over
        # the whole vocabulary.
        norm = torch.where(top_k.unsqueeze(1) < vocab, kept.logsumexp(dim=-1, keepdim=True), full_lse)
        probs = (kept - norm).exp()
        # Drop a token once the mass before it already reaches top_p (the first token always stays).
        keep &= (probs.cumsum(dim=-1) - probs < top_p) | (top_p >= 1.0)
    min_p = [s.params.min_p for s in seqs]
    if any(m > 0.0 for m in min_p):
        # p >= min_p * p_max, in logits: s >= s_max + log(min_p) (log(0) = -inf keeps all).
        floor = torch.tensor(min_p, dtype=values.dtype, device=dev).log().unsqueeze(1)
        keep &= values >= values[:, :1] + floor
    return keep


def _candidates(scaled: torch.Tensor, seqs: Seq[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's tokens that survive its filters, best first: ``(logits, token ids)``, ``[N, K]``,
    filtered-out places ``-inf``. K grows until every row's kept tokens end inside it."""
    vocab = scaled.shape[1]
    top_ks = [s.params.top_k for s in seqs if 0 < s.params.top_k < vocab]
    k = min(vocab, max([_FIRST_CANDIDATES, *top_ks]))
    weights, top = _exp_shifted(scaled)
    full_lse = top + weights.sum(dim=-1, keepdim=True).log()
    while True:
        values, ids = scaled.topk(k, dim=-1)
        keep = _keep(values, full_lse, seqs, vocab)
        # A row that keeps its last candidate may keep more, unless its top_k stops it there.
        stopped = torch.tensor([0 < s.params.top_k <= k for s in seqs], device=keep.device)
        open_ended = keep[:, -1] & ~stopped
        if k == vocab or not bool(open_ended.any()):
            return values.masked_fill(~keep, float("-inf")), ids
        k = min(vocab, 4 * k)


def _inverse_cdf(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the index at which the cumulative softmax of ``logits`` passes ``uniforms`` (in
    [0, 1)): one exact draw from the row's distribution. Summed in float64, so a rare token's mass
    is not lost to rounding next to a total near 1."""
    cum = _exp_shifted(logits)[0].double().cumsum(dim=-1)
    targets = uniforms.to(cum.device).unsqueeze(1) * cum[:, -1:]
    return torch.searchsorted(cum, targets, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """Each row's first maximum."""
    if logits.device.type == "cpu":
        # numpy's: torch's wakes its OpenMP threads for a vocabulary-sized row, ~0.2 ms of a
        # ~6 ms batch-1 step, against ~10 us here.
        return torch.from_numpy(logits.numpy().argmax(axis=-1))
    # max(dim).indices: the same first-maximum index as argmax, about 2x faster.
    return logits.max(dim=-1).indices


class Sampler:
    """Samples one token per row of ``logits`` (float32 ``[N, vocab]``) for ``seqs[i]``."""

    def __init__(self, seed: int = 0) -> None:
        # Draws for unseeded requests; seeded ones use their own (CPU) generator.
        self._generator = torch.Generator().manual_seed(seed)

    @torch.inference_mode()
    def __call__(
        self,
        logits: torch.Tensor,
        seqs: Seq[Sequence],
        eos_token_ids: Seq[int] = (),
        drafts: Seq[Seq[int]] | None = None,
    ) -> SamplerOutput:
        logits = logits.float()
        if drafts is None:
            drafts = [()] * len(seqs)
        params = [s.params for s in seqs]
        want_logprobs = any(p.logprobs is not None for p in params)
        raw_logprobs = logits.log_softmax(dim=-1) if want_logprobs else None

        guided = [i for i, s in enumerate(seqs) if s.guide is not None]
        if guided:
            logits = logits.clone()
            _grammar_mask(logits, seqs, guided)
        if any(p.min_tokens for p in params):
            logits = logits.clone()
            _min_tokens_mask(logits, seqs, eos_token_ids, drafts)
        if any(p.has_penalties for p in params):
            logits = logits.clone()
            _apply_penalties(logits, seqs, drafts)

        greedy = [p.greedy for p in params]
        tokens = _argmax(logits) if all(greedy) else self._sample(logits, seqs, greedy)
        token_ids: list[int] = tokens.tolist()

        logprobs: list[tuple[float, list[tuple[int, float]]] | None] = [None] * len(seqs)
        if raw_logprobs is not None:
            k = max(p.logprobs or 0 for p in params)
            chosen = raw_logprobs.gather(1, tokens.view(-1, 1)).squeeze(1).tolist()
            top_vals, top_ids = raw_logprobs.topk(max(k, 1), dim=-1)
            top_vals_l, top_ids_l = top_vals.tolist(), top_ids.tolist()
            for i, p in enumerate(params):
                if p.logprobs is None:
                    continue
                top = list(zip(top_ids_l[i][: p.logprobs], top_vals_l[i][: p.logprobs], strict=True))
                logprobs[i] = (chosen[i], top)
        return SamplerOutput(token_ids, logprobs)

    def _sample(self, logits: torch.Tensor, seqs: Seq[Sequence], greedy: list[bool]) -> torch.Tensor:
        """Greedy rows take the argmax; the others draw by inverse CDF with one uniform each, from
        the request's own generator when it is seeded (so its draws do not depend on the batch)."""
        dev = logits.device
        tokens = _argmax(logits) if any(greedy) else torch.empty(len(seqs), dtype=torch.long, device=dev)
        uniforms = torch.rand(len(seqs), dtype=torch.float64, generator=self._generator)
        for i, seq in enumerate(seqs):
            if seq.generator is not None and not greedy[i]:
                # Seeded generators live on the CPU so a seed means the same draws on any device.
                uniforms[i] = torch.rand(1, dtype=torch.float64, generator=seq.generator)
        temps = {i: seqs[i].params.temperature for i, g in enumerate(greedy) if not g}
        filtered = [i for i in temps if seqs[i].params.has_filters]
        plain = [i for i in temps if not seqs[i].params.has_filters]
        for rows in (filtered, plain):
            if not rows:
                continue
            index = torch.tensor(rows, device=dev)
            temp = torch.tensor([temps[i] for i in rows], dtype=logits.dtype, device=dev).unsqueeze(1)
            scaled = (logits if len(rows) == len(seqs) else logits.index_select(0, index)) / temp
            if rows is filtered:
                values, ids = _candidates(scaled, [seqs[i] for i in rows])
                drawn = ids.gather(1, _inverse_cdf(values, uniforms[rows]).unsqueeze(1)).squeeze(1)
            else:
                drawn = _inverse_cdf(scaled, uniforms[rows])
            tokens.index_copy_(0, index, drawn)
        return tokens
