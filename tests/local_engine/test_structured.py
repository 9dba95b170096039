"""Constrained decoding in the engine: the bitmask -> logits mask, and guided sequences batched with
free ones (a tiny random model: only the grammar keeps its output in shape)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

from local_engine import LLM, EngineConfig, SamplingParams
from local_engine.structured import apply_bitmask, choice_grammar, json_schema_grammar, regex_grammar
from tests.support.engine_models import make_hf_model


def test_apply_bitmask_keeps_exactly_the_set_bits() -> None:
    vocab = 70  # not a multiple of 32: the last word's high bits are beyond the vocabulary
    allowed = [{0, 5, 31, 32, 69}, {1, 33, 64}]
    bitmask = torch.zeros(2, 3, dtype=torch.int32)
    for row, tokens in enumerate(allowed):
        for t in tokens:
            word = int(bitmask[row, t // 32]) | (1 << (t % 32))
            bitmask[row, t // 32] = word - (1 << 32) if word >= 1 << 31 else word
    logits = torch.randn(3, vocab)
    untouched = logits[1].clone()
    apply_bitmask(logits, [0, 2], bitmask)
    for row, tokens in zip((0, 2), allowed, strict=True):
        finite = set(torch.isfinite(logits[row]).nonzero().flatten().tolist())
        assert finite == tokens
    assert torch.equal(logits[1], untouched)
    everything = torch.randn(2, vocab)
    apply_bitmask(everything, [0, 1], bitmask)
    assert set(torch.isfinite(everything[1]).nonzero().flatten().tolist()) == allowed[1]


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    directory: Path = tmp_path_factory.mktemp("tiny")
    make_hf_model("llama", directory, seed=5)
    return LLM(EngineConfig(model=directory, dtype="float32", num_threads=1, max_model_len=256))


def test_guided_and_free_sequences_share_a_batch(llm: LLM) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    prompt = llm.tokenizer.encode("The quick brown fox")
    params = [
        # Room for the grammar's whitespace runs (up to 40 each), which a random model at temperature
        # 1 wanders through: 60 tokens cut 10 of 58 seeded samples short, 200 none.
        SamplingParams(temperature=1.0, seed=1, n=2, max_tokens=200, grammar=json_schema_grammar(schema)),
        SamplingParams(temperature=1.0, seed=2, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=1.0, seed=3, max_tokens=20, grammar=regex_grammar(r"[a-c]{2,5}!")),
        SamplingParams(temperature=0.0, max_tokens=5, grammar=choice_grammar(["alpha", "beta"])),
    ]
    outputs = llm.generate([prompt] * 4, params)
    for c in outputs[0].outputs:
        assert c.finish_reason == "stop"  # the grammar completed, no EOS step needed
        jsonschema.validate(json.loads(c.text), schema)
    assert len(outputs[1].outputs[0].token_ids) == 12  # the free row is untouched by its neighbours
    assert re.fullmatch(r"[a-c]{2,5}!", outputs[2].outputs[0].text)
    assert outputs[3].outputs[0].text in ("alpha", "beta")


def test_a_bad_grammar_is_refused_at_add(llm: LLM) -> None:
    with pytest.raises(ValueError, match="grammar"):
        llm.generate([[5, 6, 7]], SamplingParams(grammar='{"grammars": [{"lark_grammar": "start: ("}]}'))
