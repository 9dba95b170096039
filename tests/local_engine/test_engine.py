"""The engine end to end on real (tiny random and SmolLM2) models: greedy parity with transformers
under every scheduling feature, stop handling, seeds, min_tokens, logprobs, aborts, the async API."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from local_engine import LLM, AsyncEngine, EngineConfig, SamplingParams
from local_engine.engine.llm_engine import LLMEngine
from local_engine.loader import load_model
from tests.support.engine_models import make_hf_model, smollm_gguf_dir

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("tiny-llama")
    model = make_hf_model("llama", directory, seed=3)
    return directory, model


def hf_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.fixture(scope="module")
def prompts_and_reference(tiny: tuple[Path, torch.nn.Module]) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(0)
    shared = [rng.randrange(3, 300) for _ in range(13)]
    prompts = [[rng.randrange(3, 300) for _ in range(rng.randrange(3, 30))] for _ in range(5)]
    prompts += [shared + [rng.randrange(3, 300) for _ in range(k)] for k in (1, 4, 9)]
    return prompts, [hf_greedy(tiny[1], p, NEW_TOKENS) for p in prompts]


def config(directory: Path, **kw: object) -> EngineConfig:
    # One thread: the tests share small CI machines, where spinning OpenMP threads thrash.
    return EngineConfig(model=directory, dtype="float32", num_threads=1, **kw)  # type: ignore[arg-type]


def greedy(**kw: object) -> SamplingParams:
    args: dict[str, object] = {"temperature": 0.0, "max_tokens": NEW_TOKENS, "ignore_eos": True, **kw}
    return SamplingParams(**args)  # type: ignore[arg-type]


def assert_no_leak(engine: LLMEngine) -> None:
    bm = engine.block_manager
    assert not engine.has_unfinished() and not engine.requests
    assert bm.num_free_blocks == bm.num_blocks
    assert all(rc == 0 for rc in bm.ref_counts)


# bytes per block for the tiny model in fp32 with block_size 4: 2 (K,V) * 2 layers * 4 * 2 heads * 16 * 4
_TINY_BLOCK_BYTES = 2048


@pytest.mark.parametrize(
    "variant",
    ["default", "preemption", "chunked_prefill", "no_prefix_cache", "prefix_hits"],
)
def test_greedy_matches_transformers(tiny, prompts_and_reference, variant: str) -> None:
    prompts, reference = prompts_and_reference
    kw: dict[str, object] = {"block_size": 4}
    if variant == "preemption":
        kw["kv_cache_memory_bytes"] = 14 * _TINY_BLOCK_BYTES  # room for ~1.3 sequences at full length
    if variant == "chunked_prefill":
        kw["max_num_batched_tokens"] = 7
    if variant == "no_prefix_cache":
        kw["enable_prefix_caching"] = False
    llm = LLM(config(tiny[0], **kw))
    if variant == "prefix_hits":
        first = llm.generate(prompts[5:6], greedy())  # computes (and caches) the shared prefix
        outputs = first + llm.generate(prompts[6:], greedy())
        assert llm.engine.block_manager.prefix_cache_hits >= 2 * 12
        assert outputs[1].num_cached_tokens == 12
        prompts, reference = prompts[5:], reference[5:]
    else:
        outputs = llm.generate(prompts, greedy())
    assert [o.outputs[0].token_ids for o in outputs] == reference
    assert all(o.finished and o.outputs[0].finish_reason == "length" for o in outputs)
    if variant == "preemption":
        assert llm.engine.scheduler.num_preemptions > 0
    if variant == "chunked_prefill":
        assert llm.engine.num_steps > NEW_TOKENS + 1
    assert_no_leak(llm.engine)


@pytest.fixture(scope="module")
def tiny_llm(tiny) -> LLM:
    return LLM(config(tiny[0], block_size=4))


def test_n_siblings_share_the_prompt_and_match_greedy(tiny_llm, prompts_and_reference) -> None:
    prompts, reference = prompts_and_reference
    bm = tiny_llm.engine.block_manager
    hits_before = bm.prefix_cache_hits
    [out] = tiny_llm.generate([prompts[7]], greedy(n=3))
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(c.token_ids == reference[7] for c in out.outputs)
    # Siblings 1 and 2 reuse the full prompt blocks sequence 0 computed.
    assert bm.prefix_cache_hits - hits_before >= 2 * (len(prompts[7]) - 1) // 4 * 4
    assert_no_leak(tiny_llm.engine)


def test_stop_strings_across_token_boundaries(tiny_llm, prompts_and_reference) -> None:
    prompts, _ = prompts_and_reference
    engine = tiny_llm.engine
    [full] = tiny_llm.generate([prompts[0]], greedy())
    text = full.outputs[0].text
    ids = full.outputs[0].token_ids
    # A stop string made of the last char of one token's text and the first char of the next.
    stop, cut = None, None
    for k in range(1, len(ids) - 1):
        boundary = len(tiny_llm.tokenizer.decode(ids[:k]))
        if 0 < boundary < len(text) - 1:
            candidate = text[boundary - 1 : boundary + 1]
            if text.find(candidate) == boundary - 1 and candidate.strip():
                stop, cut = candidate, boundary - 1
                break
    assert stop is not None, f"no usable token boundary in {text!r}"
    for include in (False, True):
        engine.add_request(
            f"stop-{include}", prompts[0], greedy(stop=[stop], include_stop_str_in_output=include)
        )
        deltas: list[str] = []
        last = None
        while engine.has_unfinished():
            for out in engine.step():
                deltas.append(out.outputs[0].text_delta)
                last = out
        assert last is not None and last.finished
        expected = text[: cut + len(stop)] if include else text[:cut]
        assert last.outputs[0].text == expected == "".join(deltas)
        assert last.outputs[0].finish_reason == "stop" and last.outputs[0].stop_reason == stop
        if not include:
            assert all(stop not in d for d in deltas)
    assert_no_leak(engine)


def test_seeds_are_reproducible(tiny_llm, prompts_and_reference) -> None:
    prompts, _ = prompts_and_reference

    def sample(seed: int) -> list[int]:
        params = SamplingParams(
            temperature=1.0, top_p=0.95, seed=seed, max_tokens=NEW_TOKENS, ignore_eos=True
        )
        return tiny_llm.generate([prompts[1]], params)[0].outputs[0].token_ids

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


def test_stop_token_ids_and_min_tokens(tiny_llm, prompts_and_reference) -> None:
    prompts, reference = prompts_and_reference
    stop_id = reference[2][1]
    first = reference[2].index(stop_id)
    [out] = tiny_llm.generate([prompts[2]], greedy(stop_token_ids=[stop_id]))
    assert out.outputs[0].token_ids == reference[2][: first + 1]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop_id
    [held] = tiny_llm.generate([prompts[2]], greedy(stop_token_ids=[stop_id], min_tokens=6))
    tokens = held.outputs[0].token_ids
    assert len(tokens) >= 6 and stop_id not in tokens[:5]


def test_logprobs_shape_and_values(tiny, tiny_llm, prompts_and_reference) -> None:
    prompts, reference = prompts_and_reference
    [out] = tiny_llm.generate([prompts[3]], greedy(logprobs=3))
    completion = out.outputs[0]
    assert completion.token_ids == reference[3]
    assert completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids)
    for entry, token in zip(completion.logprobs, completion.token_ids, strict=True):
        assert entry.token_id == token and entry.logprob <= 0.0
        assert len(entry.top) == 3 and entry.top[0][0] == token  # greedy: the sampled token is the top one
        assert entry.top[0][2] == pytest.approx(entry.logprob)
        assert [v for _, _, v in entry.top] == sorted((v for _, _, v in entry.top), reverse=True)
    with torch.no_grad():
        raw = tiny[1](torch.tensor([prompts[3]])).logits[0, -1].log_softmax(-1)
    assert completion.logprobs[0].logprob == pytest.approx(float(raw[reference[3][0]]), abs=1e-4)


def test_abort_frees_blocks_at_once(tiny_llm, prompts_and_reference) -> None:
    prompts, _ = prompts_and_reference
    engine = tiny_llm.engine
    for i, p in enumerate(prompts[:4]):
        engine.add_request(f"ab{i}", p, greedy(max_tokens=NEW_TOKENS))
    for _ in range(3):
        engine.step()
    used = engine.block_manager.num_blocks - engine.block_manager.num_free_blocks
    assert used > 0
    final = engine.abort("ab0")
    assert final is not None and final.finished and final.outputs[0].finish_reason == "abort"
    assert engine.abort("ab1") is not None
    assert engine.abort("ab0") is None
    remaining = sum(len(s.block_table) for r in engine.requests.values() for s in r.seqs)
    assert engine.block_manager.num_blocks - engine.block_manager.num_free_blocks == remaining
    engine.abort("ab2")
    engine.abort("ab3")
    assert_no_leak(engine)


def test_prompt_that_cannot_fit_is_rejected(tiny_llm) -> None:
    with pytest.raises(ValueError, match="prompt"):
        tiny_llm.generate([[5] * 300], greedy())
    with pytest.raises(ValueError, match="prompt"):
        tiny_llm.generate([[]], greedy())


async def test_async_engine_streams_and_cancellation_frees_blocks(tiny, prompts_and_reference) -> None:
    prompts, reference = prompts_and_reference
    engine = AsyncEngine(config(tiny[0], block_size=4), loaded=load_model(tiny[0], dtype=torch.float32))
    await engine.start()
    try:
        token_ids: list[int] = []
        text = ""
        async for out in engine.generate("a", prompts[4], greedy()):
            text += out.outputs[0].text_delta
            token_ids = out.outputs[0].token_ids
        assert token_ids == reference[4]
        assert text == out.outputs[0].text

        stream = engine.generate("b", prompts[4], greedy(max_tokens=200))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 2:
                break
        await stream.aclose()
        await engine.wait_applied()
        core = engine.engine
        assert core is not None
        assert_no_leak(core)

        gen = engine.generate("c", prompts[4], greedy(max_tokens=200))
        await gen.__anext__()
        await engine.abort("c")
        assert_no_leak(core)
        final = await gen.__anext__()
        assert final.finished and final.outputs[0].finish_reason == "abort"
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
    finally:
        await engine.shutdown()


# -- SmolLM2 (the default GGUF) against transformers' own GGUF loader, fp32 -------------------------

SMOL_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "List three primary colors.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 7?",
    "Name a famous physicist.",
    "Translate 'good morning' to Spanish.",
    "Give me a synonym for happy.",
    "What does CPU stand for?",
    "Tell me a fun fact about octopuses.",
]


def test_smollm2_greedy_matches_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    llm = LLM(EngineConfig(model=None, dtype="float32", num_threads=1))
    tok = llm.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in SMOL_PROMPTS]
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    directory, filename = smollm_gguf_dir(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, dtype=torch.float32
    ).eval()
    for prompt, out in zip(prompts, outputs, strict=True):
        with torch.no_grad():
            result = reference(torch.tensor([prompt]), use_cache=True)
            expected = [int(result.logits[0, -1].argmax())]
            past = result.past_key_values
            for _ in range(15):
                result = reference(torch.tensor([[expected[-1]]]), past_key_values=past, use_cache=True)
                past = result.past_key_values
                expected.append(int(result.logits[0, -1].argmax()))
        assert out.outputs[0].token_ids == expected, tok.decode(prompt)
