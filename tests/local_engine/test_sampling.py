"""Sampler and SamplingParams: greedy, temperature/top_k/top_p/min_p, penalties, seeds, min_tokens,
logprobs; parameter validation."""

from __future__ import annotations

import math

import pytest
import torch

from local_engine.layers.sampler import Sampler
from local_engine.sampling_params import SamplingParams
from local_engine.sequence import Sequence

VOCAB = 32


def seq(params: SamplingParams, prompt: list[int] | None = None, output: list[int] | None = None) -> Sequence:
    s = Sequence("r", 0, prompt or [0], params)
    s.token_ids.extend(output or [])
    return s


def logits_from_probs(probs: list[float]) -> torch.Tensor:
    row = torch.full((VOCAB,), -1e9)
    row[: len(probs)] = torch.log(torch.tensor(probs))
    return row


def draw(params: SamplingParams, row: torch.Tensor, times: int, sampler: Sampler | None = None) -> list[int]:
    sampler = sampler or Sampler(0)
    seqs = [seq(params) for _ in range(times)]
    return sampler(row.unsqueeze(0).repeat(times, 1), seqs).token_ids


def test_greedy_is_argmax_per_row() -> None:
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(1))
    out = Sampler(0)(logits, [seq(SamplingParams(temperature=0)) for _ in range(5)])
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs == [None] * 5


def test_mixed_batch_keeps_greedy_rows_greedy() -> None:
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(2))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0)] * 2
    out = Sampler(0)(logits, [seq(p) for p in params])
    assert out.token_ids[0] == int(logits[0].argmax()) and out.token_ids[2] == int(logits[2].argmax())


def test_temperature_sampling_follows_the_distribution() -> None:
    row = logits_from_probs([0.6, 0.3, 0.1])
    tokens = draw(SamplingParams(temperature=1.0), row, 3000)
    freq = [tokens.count(t) / len(tokens) for t in range(3)]
    assert all(abs(f - p) < 0.04 for f, p in zip(freq, [0.6, 0.3, 0.1], strict=True))
    assert set(tokens) <= {0, 1, 2}


def test_top_k_top_p_min_p_filter() -> None:
    row = logits_from_probs([0.4, 0.3, 0.2, 0.1])
    assert set(draw(SamplingParams(top_k=2), row, 400)) == {0, 1}
    assert set(draw(SamplingParams(top_p=0.65), row, 400)) == {0, 1}  # 0.4 + 0.3 reaches 0.65
    assert set(draw(SamplingParams(top_p=0.1), row, 100)) == {0}
    assert set(draw(SamplingParams(min_p=0.6), row, 400)) == {0, 1}  # >= 0.6 * 0.4 = 0.24
    assert set(draw(SamplingParams(top_k=1, temperature=5.0), row, 100)) == {0}


def reference_kept(row: torch.Tensor, params: SamplingParams) -> set[int]:
    """The tokens top_k / top_p / min_p keep, by a full sort (the filters' definition)."""
    values, order = (row / params.temperature).sort(descending=True)
    if params.top_k > 0:
        values[params.top_k :] = float("-inf")
    probs = values.softmax(-1)
    keep = (probs.cumsum(-1) - probs < params.top_p) | (params.top_p >= 1.0)
    keep &= probs >= probs[0] * params.min_p
    keep &= values > float("-inf")
    return set(order[keep].tolist())


def test_filters_over_a_large_vocabulary_keep_exactly_the_sorted_definition() -> None:
    """Rows whose kept set is larger than the first candidates (a flat distribution under top_p or
    min_p) are widened until it fits; a top_k row stops at its k."""
    vocab = 5000
    flat = torch.randn(vocab, generator=torch.Generator().manual_seed(4)) * 0.3
    peaked = flat.clone()
    peaked[17] += 12.0
    cases = [
        (flat, SamplingParams(temperature=1.0, top_p=0.9)),  # keeps thousands
        (flat, SamplingParams(temperature=0.7, min_p=0.5)),  # keeps hundreds
        (flat, SamplingParams(temperature=1.0, top_k=300, top_p=0.5)),
        (peaked, SamplingParams(temperature=1.0, top_p=0.9)),  # keeps one
        (flat, SamplingParams(temperature=1.0, top_k=3)),
    ]
    sampler = Sampler(5)
    seen: list[set[int]] = [set() for _ in cases]
    for _ in range(60):
        batch = [seq(params) for _, params in cases]
        rows = torch.stack([row for row, _ in cases])
        for i, token in enumerate(sampler(rows, batch).token_ids):
            seen[i].add(token)
    for (row, params), drawn in zip(cases, seen, strict=True):
        kept = reference_kept(row, params)
        assert drawn <= kept, params
    rank = {t: r for r, t in enumerate(flat.argsort(descending=True).tolist())}
    for i in (0, 1, 2):  # drawn well past the best 64, where a sort of the first candidates stops
        assert max(rank[t] for t in seen[i]) >= 64, cases[i][1]
    assert seen[3] == {17}
    assert len(reference_kept(flat, cases[4][1])) == 3 and len(seen[4]) == 3


def test_seeded_requests_are_reproducible_whatever_the_batch() -> None:
    row = torch.randn(VOCAB, generator=torch.Generator().manual_seed(3))

    def run(seed: int, batch_noise: int) -> list[int]:
        sampler = Sampler(batch_noise)
        s = seq(SamplingParams(temperature=1.0, seed=seed))
        others = [seq(SamplingParams(temperature=1.0)) for _ in range(batch_noise % 3)]
        tokens = []
        for _ in range(20):
            batch = [s, *others]
            tokens.append(sampler(row.unsqueeze(0).repeat(len(batch), 1), batch).token_ids[0])
        return tokens

    assert run(7, 0) == run(7, 5) == run(7, 1)
    assert run(7, 0) != run(8, 0)


def test_min_tokens_masks_eos_and_stop_ids_until_reached() -> None:
    row = logits_from_probs([0.05, 0.9, 0.05])  # token 1 plays EOS
    params = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[2])
    early = seq(params, output=[5])
    assert Sampler(0)(row.unsqueeze(0), [early], eos_token_ids=[1]).token_ids == [0]
    done = seq(params, output=[5, 6])
    assert Sampler(0)(row.unsqueeze(0), [done], eos_token_ids=[1]).token_ids == [1]


def test_penalties() -> None:
    row = logits_from_probs([0.5, 0.45, 0.05])
    # Token 0 was generated: frequency/presence penalties push it below token 1.
    for params in (
        SamplingParams(temperature=0, frequency_penalty=1.0),
        SamplingParams(temperature=0, presence_penalty=1.0),
    ):
        assert Sampler(0)(row.unsqueeze(0), [seq(params, output=[0])]).token_ids == [1]
        assert Sampler(0)(row.unsqueeze(0), [seq(params)]).token_ids == [0]
    # Repetition penalty also counts prompt tokens; positive logits are divided.
    pos = torch.full((VOCAB,), -5.0)
    pos[0], pos[1] = 2.0, 1.5
    rep = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert Sampler(0)(pos.unsqueeze(0), [seq(rep, prompt=[0])]).token_ids == [1]
    assert Sampler(0)(pos.unsqueeze(0), [seq(rep, prompt=[3])]).token_ids == [0]


def test_logprobs_are_the_raw_model_distribution() -> None:
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(4))
    params = SamplingParams(temperature=0.5, logprobs=3, seed=1, presence_penalty=1.5)
    out = Sampler(0)(logits, [seq(params, output=[1, 2]), seq(SamplingParams(temperature=0))])
    raw = logits.log_softmax(-1)
    chosen, top = out.logprobs[0]
    assert math.isclose(chosen, float(raw[0, out.token_ids[0]]), abs_tol=1e-5)
    assert [t for t, _ in top] == raw[0].topk(3).indices.tolist()
    assert all(math.isclose(v, float(raw[0, t]), abs_tol=1e-5) for t, v in top)
    assert out.logprobs[1] is None
    zero = Sampler(0)(logits[:1], [seq(SamplingParams(temperature=0, logprobs=0))])
    assert zero.logprobs[0] is not None and zero.logprobs[0][1] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 0),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_k", -2),
        ("min_p", 1.5),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -2.5),
        ("repetition_penalty", 0.0),
        ("max_tokens", 0),
        ("min_tokens", -1),
        ("logprobs", 21),
        ("stop", [""]),
        ("stop_token_ids", [-1]),
    ],
)
def test_invalid_params_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens_is_rejected() -> None:
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=2, min_tokens=3)


def test_stop_accepts_a_single_string() -> None:
    assert SamplingParams(stop="###").stop == ["###"]
