"""Prefix-cache summaries: the published hashes are the block manager's own, the Bloom filter
holds them, the wire format round-trips and refuses garbage, and the tokenizer spec rebuilds a
tokenizer that renders and encodes exactly like the engine's."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from local_engine.engine.block_manager import BlockManager
from local_engine.loader.hf import load_tokenizer
from local_engine.prefix_summary import (
    BloomFilter,
    PrefixSummary,
    PromptEncoder,
    chain_hashes,
    prompt_ids,
    summarize,
    tokenizer_fingerprint,
    tokenizer_from_spec,
    tokenizer_spec,
)
from local_engine.sampling_params import SamplingParams
from local_engine.sequence import Sequence
from local_engine.tokenizer import Tokenizer
from tests.support.engine_models import write_tokenizer


def cache_tokens(bm: BlockManager, tokens: list[int], request_id: str) -> Sequence:
    """Run ``tokens`` through the block manager as a finished prefill would, then free them."""
    seq = Sequence(request_id, 0, list(tokens), SamplingParams())
    bm.allocate(seq)
    seq.num_computed_tokens = seq.num_tokens
    bm.commit(seq)
    bm.free(seq)
    return seq


def test_chain_hashes_are_the_block_managers_hashes() -> None:
    bm = BlockManager(num_blocks=32, block_size=4)
    a = [7, 1, 9, 3, 4, 4, 2, 8, 5, 6, 0, 1, 2]  # 3 full blocks + 1 token
    b = [*a[:8], 99, 98, 97, 96, 95]  # shares 2 blocks with a
    cache_tokens(bm, a, "a")
    cache_tokens(bm, b, "b")
    expected = set(chain_hashes(a, 4)) | set(chain_hashes(b, 4))
    assert len(chain_hashes(a, 4)) == 3
    assert set(bm.cached_hashes()) == expected
    # And a later prompt with that prefix is a hit for exactly those blocks.
    seq = Sequence("c", 0, [*a[:8], 1, 2, 3, 4, 5], SamplingParams())
    bm.allocate(seq)
    assert seq.num_cached_tokens == 8


def test_bloom_filter_holds_every_hash_and_rarely_anything_else() -> None:
    rng = random.Random(3)
    inserted = [rng.getrandbits(64) - (1 << 63) for _ in range(2000)]
    bloom = BloomFilter.build(inserted, capacity=2000)
    assert all(h in bloom for h in inserted)
    others = [rng.getrandbits(64) - (1 << 63) for _ in range(20000)]
    false_positives = sum(h in bloom for h in others)
    assert false_positives < 20000 * 0.01  # 16 bits and 4 hashes per entry: ~0.24% expected
    assert not any(h in BloomFilter.build([], capacity=2000) for h in inserted[:100])


def test_summary_round_trips_and_refuses_garbage() -> None:
    hashes = chain_hashes(list(range(64)), 16)
    summary = summarize(hashes, capacity=100, block_size=16, tokenizer="abc", queries=10, hits=4)
    back = PrefixSummary.from_json(summary.to_json())
    assert back == summary
    assert all(h in back.bloom for h in hashes)
    odd_bloom = {"num_bits": 1000, "num_hashes": 4, "data": "AA=="}
    for bad in (None, {}, {**summary.to_json(), "bloom": odd_bloom}):
        with pytest.raises(ValueError, match="malformed prefix-cache summary"):
            PrefixSummary.from_json(bad)


def test_tokenizer_spec_rebuilds_the_engines_tokenizer(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    engine_tok = load_tokenizer(tmp_path, {})
    spec = tokenizer_spec(engine_tok)
    rebuilt = tokenizer_from_spec(spec)
    assert tokenizer_fingerprint(spec) == tokenizer_fingerprint(tokenizer_spec(rebuilt))
    body = {
        "messages": [
            {"role": "system", "content": "Paged attention keeps the KV cache in blocks."},
            {"role": "user", "content": [{"type": "text", "text": "Hello world! café 東京"}]},
        ]
    }
    text = engine_tok.apply_chat_template(
        [body["messages"][0], {"role": "user", "content": "Hello world! café 東京"}]
    )
    assert prompt_ids(rebuilt, "chat", body) == engine_tok.encode(text)
    assert prompt_ids(rebuilt, "completions", {"prompt": "The quick brown fox"}) == engine_tok.encode(
        "The quick brown fox"
    )
    assert prompt_ids(rebuilt, "completions", {"prompt": [5, 6, 7]}) == [5, 6, 7]
    assert prompt_ids(rebuilt, "chat", {"messages": "not a list"}) is None
    with pytest.raises(ValueError, match="malformed tokenizer spec"):
        tokenizer_from_spec({"tokenizer_json": "{"})


def conversation_prompts(tok: Tokenizer, turns: int) -> list[str]:
    """Rendered prompts of a growing conversation (each turn re-renders every earlier message)."""
    words = ["Hello", "world!", "café", "naïve", "東京", "😀", "The", "quick", "fox", "  spaced", "\n\nlines"]
    messages: list[dict[str, str]] = [{"role": "system", "content": "Paged attention keeps blocks."}]
    prompts = []
    for t in range(turns):
        messages.append({"role": "user", "content": " ".join(words[t:] + words[:t])})
        prompts.append(tok.apply_chat_template(messages))
        messages.append({"role": "assistant", "content": "".join(words[: t + 2])})
    return prompts


def check_piecewise(tok: Tokenizer) -> None:
    encoder = PromptEncoder(tok)
    assert encoder.piecewise
    for text in conversation_prompts(tok, 8):
        assert encoder.encode(text) == tok.encode(text)
    assert encoder.piecewise  # every check agreed
    pieces = len(encoder._pieces)
    encoder.encode(conversation_prompts(tok, 9)[-1])
    assert len(encoder._pieces) <= pieces + 3  # only the new turn's pieces were encoded


def test_prompt_encoder_matches_whole_text_encoding(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    check_piecewise(load_tokenizer(tmp_path, {}))


def test_prompt_encoder_matches_on_the_bundled_smollm2_tokenizer() -> None:
    from local_engine.loader import ModelLoadError, resolve_model_path
    from local_engine.loader.gguf import GGUFFile, build_tokenizer

    try:
        path, _ = resolve_model_path(None)
    except ModelLoadError as exc:
        pytest.skip(f"bundled model not installed: {exc}")
    check_piecewise(build_tokenizer(GGUFFile(path)))


def test_prompt_encoder_falls_back_when_pieces_disagree(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path, {})
    encoder = PromptEncoder(tok)
    text = conversation_prompts(tok, 2)[-1]
    encoder._pieces["<|im_end|>\n"] = [3, 3, 3]  # a piece that encodes differently in context
    assert encoder.encode(text) == tok.encode(text)
    assert not encoder.piecewise
