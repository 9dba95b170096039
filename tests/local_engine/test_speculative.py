"""Speculative decoding by prompt lookup: the proposer on its own, then the engine with it on and off
on real models (a tiny random Llama, checked against transformers, and the bundled SmolLM2): greedy
tokens, text and finish reasons identical, sampled tokens as likely as the model says, stop
conditions inside an accepted run, the prefix cache holding only tokens the sequence really has, and
who does not speculate."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from local_engine import LLM, EngineConfig, SamplingParams
from local_engine.engine.llm_engine import LLMEngine
from local_engine.engine.ngram_proposer import NgramIndex, NgramProposer
from local_engine.engine.outputs import RequestOutput
from local_engine.layers.sampler import Sampler
from local_engine.sequence import Sequence
from local_engine.structured import choice_grammar
from tests.support.engine_models import make_hf_model

# -- the proposer --------------------------------------------------------------------------------


def test_proposes_what_followed_the_latest_longest_match() -> None:
    proposer = NgramProposer(num_tokens=3, min_n=1, max_n=3)
    index = NgramIndex()
    #          0  1  2  3  4  5  6  7  8  9 10
    tokens = [5, 6, 7, 8, 9, 1, 6, 7, 2, 5, 6, 7]
    # "5 6 7" (n = 3) occurred at 0; the more recent "6 7" (n = 2, at 6) loses to the longer match.
    assert proposer.propose(index, tokens, limit=10) == [8, 9, 1]
    tokens += [2]
    # "6 7 2" occurred at 6..8: what followed it is 5 6 7 (the latest occurrence of the 3-gram).
    assert proposer.propose(index, tokens, limit=10) == [5, 6, 7]
    assert proposer.propose(index, tokens, limit=2) == [5, 6]
    assert proposer.propose(index, tokens, limit=0) == []


def test_no_match_proposes_nothing() -> None:
    proposer = NgramProposer(num_tokens=4, min_n=2, max_n=3)
    index = NgramIndex()
    assert proposer.propose(index, [1, 2, 3, 4, 5], limit=8) == []
    assert proposer.propose(index, [1, 2, 3, 4, 5, 9, 1], limit=8) == []  # "1" alone is below min_n
    assert proposer.propose(index, [1, 2, 3, 4, 5, 9, 1, 2], limit=8) == [3, 4, 5, 9]


# -- the sampler's rows ----------------------------------------------------------------------------


def test_each_row_is_sampled_as_if_its_drafts_were_generated() -> None:
    """Row ``j`` of a speculating sequence sees penalties and min_tokens as a plain step would once
    its first ``j`` drafts were appended (a real sequence with them appended is the reference)."""
    eos, favourite, runner_up = 2, 7, 8
    logits = torch.zeros(3, 16)
    logits[:, favourite] = 1.0
    logits[:, runner_up] = 0.6
    logits[:, eos] = 1.5  # the likeliest, while min_tokens allows it
    params = SamplingParams(temperature=0.0, frequency_penalty=0.5, min_tokens=3)
    seq = Sequence("r", 0, [1, 1], params)
    seq.token_ids.append(5)  # one token generated so far
    drafts = [[], [favourite], [favourite, favourite]]
    out = Sampler(0)(logits, [seq] * 3, [eos], drafts)
    expected = []
    for row, before in enumerate(drafts):
        plain = Sequence("r", 0, [1, 1], params)
        plain.token_ids += [5, *before]
        expected += Sampler(0)(logits[row : row + 1], [plain], [eos]).token_ids
    # Rows 0 and 1 (1 and 2 tokens generated) mask EOS; row 1 has the favourite penalised below the
    # runner-up; row 2 (3 generated) may end.
    assert out.token_ids == expected == [favourite, runner_up, eos]


# -- the engine on a tiny random model -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("tiny-llama-spec")
    return directory, make_hf_model("llama", directory, seed=3)


def tiny_engine(directory: Path, **kw: object) -> LLMEngine:
    args: dict[str, object] = {
        "model": directory,
        "dtype": "float32",
        "num_threads": 1,
        "block_size": 4,
        "prompt_lookup_min": 1,
        **kw,
    }
    return LLMEngine(EngineConfig(**args))  # type: ignore[arg-type]


def hf_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def run(
    engine: LLMEngine, prompts: list[list[int]] | list[str], params: SamplingParams
) -> list[RequestOutput]:
    """Every prompt to completion, all queued at once; the final outputs in prompt order."""
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    done: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks and not any(bm.ref_counts)
    return [done[str(i)] for i in range(len(prompts))]


def with_and_without(
    engine: LLMEngine, prompts: list[list[int]] | list[str], params: SamplingParams
) -> tuple[list[RequestOutput], list[RequestOutput], int]:
    """The same requests on the same engine with speculation, then without; and the tokens accepted."""
    proposer = engine.proposer
    assert proposer is not None
    accepted = engine.stats.spec_accepted_tokens
    fast = run(engine, prompts, params)
    accepted = engine.stats.spec_accepted_tokens - accepted
    engine.block_manager.reset_prefix_cache()
    engine.proposer = None
    try:
        plain = run(engine, prompts, params)
    finally:
        engine.proposer = proposer
        engine.block_manager.reset_prefix_cache()
    return fast, plain, accepted


def assert_same(fast: list[RequestOutput], plain: list[RequestOutput]) -> None:
    for a, b in zip(fast, plain, strict=True):
        for x, y in zip(a.outputs, b.outputs, strict=True):
            assert (x.token_ids, x.text, x.finish_reason, x.stop_reason) == (
                y.token_ids,
                y.text,
                y.finish_reason,
                y.stop_reason,
            )
            assert (x.logprobs is None) == (y.logprobs is None)
            # A verifying step is a decode batch of several rows: float sums may round differently.
            for lx, ly in zip(x.logprobs or [], y.logprobs or [], strict=True):
                assert lx.token_id == ly.token_id and [t[0] for t in lx.top] == [t[0] for t in ly.top]
                assert lx.logprob == pytest.approx(ly.logprob, abs=1e-5)
                assert [t[2] for t in lx.top] == pytest.approx([t[2] for t in ly.top], abs=1e-5)


def repetitive_prompts() -> list[list[int]]:
    rng = random.Random(0)
    motif = [rng.randrange(3, 300) for _ in range(9)]
    return [motif * 4, [rng.randrange(3, 300) for _ in range(11)] + motif * 2]


@pytest.mark.parametrize("variant", ["default", "tight_kv", "small_budget", "no_prefix_cache"])
def test_greedy_tokens_match_transformers_with_drafts_accepted(tiny, variant: str) -> None:
    kw: dict[str, object] = {}
    if variant == "tight_kv":  # drafts must give way when blocks run short (2048 bytes a block)
        kw["kv_cache_memory_bytes"] = 24 * 2048
    if variant == "small_budget":  # drafts trimmed to the step's token budget
        kw["max_num_batched_tokens"] = 3
    if variant == "no_prefix_cache":
        kw["enable_prefix_caching"] = False
    engine = tiny_engine(tiny[0], **kw)
    prompts = repetitive_prompts()
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    fast, plain, accepted = with_and_without(engine, prompts, params)
    assert_same(fast, plain)
    for prompt, out in zip(prompts, fast, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(tiny[1], prompt, 40)
    assert accepted > 0
    stats = engine.stats
    assert 0 < stats.spec_accepted_tokens <= stats.spec_draft_tokens
    snap = engine.snapshot()
    assert (snap.spec_drafts, snap.spec_draft_tokens, snap.spec_accepted_tokens) == (
        stats.spec_drafts,
        stats.spec_draft_tokens,
        stats.spec_accepted_tokens,
    )


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        # Windowed and soft-capped attention (host metadata per row) and a window on every layer.
        ("gemma2", {"sliding_window": 5, "attn_logit_softcapping": 1.5, "final_logit_softcapping": 3.0}),
        ("mistral", {"sliding_window": 6}),
    ],
)
def test_windowed_models_match_transformers(tmp_path: Path, kind: str, overrides: dict[str, object]) -> None:
    model = make_hf_model(kind, tmp_path, seed=5, **overrides)
    engine = tiny_engine(tmp_path)
    prompts = repetitive_prompts()
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    fast, plain, accepted = with_and_without(engine, prompts, params)
    assert_same(fast, plain)
    for prompt, out in zip(prompts, fast, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(model, prompt, 24)
    assert accepted > 0


def test_fewer_steps_and_only_real_tokens_in_the_prefix_cache(tiny) -> None:
    engine = tiny_engine(tiny[0], speculative_max_batch=1)
    prompt = repetitive_prompts()[0]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    [out] = run(engine, [prompt], params)
    steps = engine.num_steps
    assert steps < 40  # one prefill step and fewer decode steps than tokens
    # Every block in the prefix cache holds exactly the tokens at its place in prompt + output, not
    # a rejected draft written into that slot.
    full = prompt + out.outputs[0].token_ids
    bm = engine.block_manager
    cached = [tokens for tokens in bm.block_tokens if tokens is not None]
    assert len(cached) == (len(full) - 1) // 4  # every full block computed
    chunks = {tuple(full[i : i + 4]) for i in range(0, len(full) - 3, 4)}
    assert set(cached) <= chunks
    # A follow-up over the whole conversation reuses those blocks and still decodes identically.
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    [follow] = run(engine, [full], params)
    assert follow.num_cached_tokens == len(cached) * 4
    assert follow.outputs[0].token_ids == hf_greedy(tiny[1], full, 12)


def test_stop_conditions_inside_an_accepted_run(tiny) -> None:
    engine = tiny_engine(tiny[0])
    prompts = repetitive_prompts()
    reference = run(engine, prompts, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))
    ids = reference[0].outputs[0].token_ids
    text = reference[0].outputs[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    # Each stop lands well inside the output, where the drafts are running ahead of it.
    cases = [
        SamplingParams(temperature=0.0, max_tokens=13, ignore_eos=True, logprobs=3),
        SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[ids[17]], ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=30, stop=[stop]),
        SamplingParams(temperature=0.0, max_tokens=30, stop=[stop], include_stop_str_in_output=True),
        SamplingParams(
            temperature=0.0, max_tokens=30, min_tokens=20, stop_token_ids=[ids[3]], ignore_eos=True
        ),
    ]
    for params in cases:
        fast, plain, accepted = with_and_without(engine, prompts, params)
        assert_same(fast, plain)
        assert accepted > 0
    assert len(fast[0].outputs[0].token_ids) >= 20  # min_tokens masked the stop token in every row
    # Penalties count the drafts before each row as generated: the same tokens, drafts verified
    # (penalties that still let the tiny model repeat itself, so lookups find drafts).
    for penalties in ({"repetition_penalty": 0.9}, {"frequency_penalty": -0.05, "presence_penalty": 0.05}):
        before = engine.stats.spec_drafts
        params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, **penalties)
        fast, plain, _ = with_and_without(engine, prompts, params)
        assert_same(fast, plain)
        assert engine.stats.spec_drafts > before


def test_streamed_deltas_add_up_with_several_tokens_a_step(tiny) -> None:
    engine = tiny_engine(tiny[0])
    prompt = repetitive_prompts()[0]
    engine.add_request("s", prompt, SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))
    text, tokens, sizes = "", 0, []
    while engine.has_unfinished():
        for out in engine.step():
            text += out.outputs[0].text_delta
            tokens += out.outputs[0].num_new_tokens
            sizes.append(out.outputs[0].num_new_tokens)
            final = out
    assert text == final.outputs[0].text and tokens == 30 == len(final.outputs[0].token_ids)
    assert max(sizes) > 1


def test_sampled_tokens_keep_their_distribution(tmp_path: Path) -> None:
    """Temperature sampling with drafts: how often the second token is its draft, and how often the
    third token (sampled after an accepted draft, or in the next step after a rejected one) is each
    of its likeliest values, match the model's own probabilities, computed exactly with transformers."""
    model = make_hf_model("llama", tmp_path, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaked enough that drafts are often right
    model.save_pretrained(tmp_path, safe_serialization=True)
    rng = random.Random(1)
    prompt = [rng.randrange(3, 300) for _ in range(8)]
    prompt += hf_greedy(model, prompt, 40)  # loops a little, so one-token lookups find drafts
    temperature, samples = 0.7, 2000

    def next_probs(contexts: list[list[int]]) -> torch.Tensor:
        with torch.no_grad():
            return (model(torch.tensor(contexts)).logits[:, -1] / temperature).softmax(-1)

    p1 = next_probs([prompt])[0]
    firsts = [t for t in range(p1.shape[0]) if p1[t] > 1e-6]
    p2 = next_probs([[*prompt, t] for t in firsts])
    proposer = NgramProposer(num_tokens=1, min_n=1, max_n=4)
    drafts = {t: proposer.propose(NgramIndex(), [*prompt, t], 1) for t in firsts}
    p_draft = sum(float(p1[t] * p2[i, drafts[t][0]]) for i, t in enumerate(firsts) if drafts[t])
    # The third token's marginal over the likely (first, second) pairs; the rest bounds the error.
    pairs = [(t1, t2, float(p1[t1] * p2[i, t2])) for i, t1 in enumerate(firsts) for t2 in range(p2.shape[1])]
    pairs = [pair for pair in pairs if pair[2] > 1e-5]
    p3 = next_probs([[*prompt, t1, t2] for t1, t2, _ in pairs])
    marginal = (torch.tensor([w for _, _, w in pairs]).unsqueeze(1) * p3).sum(0)
    unaccounted = 1.0 - sum(w for _, _, w in pairs)

    engine = tiny_engine(tmp_path, speculative_max_batch=64)
    params = SamplingParams(temperature=temperature, max_tokens=3, ignore_eos=True)
    outs: list[list[int]] = []
    for _ in range(samples // 50):
        outs += [o.outputs[0].token_ids for o in run(engine, [prompt] * 50, params)]
    assert engine.stats.spec_drafts > samples / 2  # most second tokens came with a draft
    checks = [(sum(1 for t1, t2, _ in outs if drafts.get(t1) == [t2]), p_draft, 0.0)]
    for token in marginal.topk(3).indices.tolist():
        checks.append((sum(1 for o in outs if o[2] == token), float(marginal[token]), unaccounted))
    for observed, p, slack in checks:
        sigma = (p * (1 - p) / samples) ** 0.5
        assert abs(observed / samples - p) < 4.5 * sigma + slack, (observed / samples, p)


def test_who_does_not_speculate(tiny) -> None:
    engine = tiny_engine(tiny[0], speculative_max_batch=2)
    prompt = repetitive_prompts()[0]
    no_drafts = [
        SamplingParams(temperature=0.8, seed=1, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=20, grammar=choice_grammar(["yes", "no"])),
    ]
    for params in no_drafts:
        before = engine.stats.spec_drafts
        run(engine, [prompt], params)
        assert engine.stats.spec_drafts == before, params
    # Three sequences running: over speculative_max_batch, so none of them drafts.
    before = engine.stats.spec_drafts
    run(engine, [prompt] * 3, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
    assert engine.stats.spec_drafts == before
    run(engine, [prompt] * 2, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
    assert engine.stats.spec_drafts > before


# -- the bundled SmolLM2, as served (its GGUF's own quantization) ---------------------------------

SMOL_PROMPTS = [
    "Repeat this code exactly, then stop:\n\ndef add(a, b):\n    return a + b\n\n"
    "def mul(a, b):\n    return a * b\n",
    "Rewrite this sentence in the past tense: The cat sits on the mat and the dog sleeps by the door.",
    "What is the capital of France?",
    "Tell me a fun fact about octopuses.",
]


def test_smollm2_greedy_identical_with_and_without() -> None:
    # Four sequences at once, all speculating: drafts of different lengths share one step.
    llm = LLM(EngineConfig(model=None, num_threads=1, speculative_max_batch=4))
    tok = llm.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in SMOL_PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=48, logprobs=2)
    fast, plain, accepted = with_and_without(llm.engine, prompts, params)
    assert_same(fast, plain)
    assert accepted > 0
