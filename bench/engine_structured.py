"""Constrained decoding's cost: 16 concurrent JSON-schema requests vs the same 16 unconstrained.

The engine (bundled SmolLM2-135M-Instruct, as ``switchyard serve`` loads it) runs the 16 chat prompts
of ``bench/engine_cpu.py`` batched, greedy, 128 new tokens each, twice per round: free, and with a
JSON schema (a long array of person objects: strings, integers, enums; it cannot complete within
128 tokens, so both runs do the same 16 x 128 tokens and differ only by the grammar masks). Each
round runs both, in alternating order, so the machine's noise falls on both; every run is printed,
then the ratio of median throughputs. The bar (issue 17): constrained >= 80% of unconstrained.

    .venv/bin/python bench/engine_structured.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine_cpu import NEW_TOKENS, build_prompts

SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 100,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "city": {"type": "string", "enum": ["Paris", "London", "Tokyo", "Lagos", "Lima"]},
                    "email": {"type": "string", "format": "email"},
                },
                "required": ["name", "age", "city", "email"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["people"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from local_engine import LLM, EngineConfig, SamplingParams
    from local_engine.structured import json_schema_grammar

    torch.set_num_threads(args.threads)
    prompts = build_prompts()
    llm = LLM(EngineConfig(model=None, num_threads=args.threads, max_model_len=1024))
    free = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    guided = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, grammar=json_schema_grammar(SCHEMA)
    )
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4, grammar=guided.grammar))  # warm
    print(f"{len(prompts)} prompts x {NEW_TOKENS} new tokens, greedy, threads={args.threads}")
    rates: dict[str, list[float]] = {"free": [], "json_schema": []}
    sample = ""
    for round_ in range(args.rounds):
        runs = [("free", free), ("json_schema", guided)]
        for name, params in runs if round_ % 2 == 0 else runs[::-1]:  # neither always goes first
            start = time.perf_counter()
            outputs = llm.generate(prompts, params)
            wall = time.perf_counter() - start
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            rate = tokens / wall
            rates[name].append(rate)
            print(f"round {round_ + 1} {name:12s} {tokens} tokens in {wall:6.2f} s = {rate:7.1f} tok/s")
            if params is guided:
                sample = outputs[0].outputs[0].text
    print(f"json_schema sample: {sample[:160]!r}...")
    free_median, guided_median = statistics.median(rates["free"]), statistics.median(rates["json_schema"])
    ratios = [g / f for f, g in zip(rates["free"], rates["json_schema"], strict=True)]
    print(
        f"median: free {free_median:.1f} tok/s, json_schema {guided_median:.1f} tok/s, "
        f"ratio {guided_median / free_median:.2f} "
        f"(per round {', '.join(f'{r:.2f}' for r in ratios)}; bar >= 0.80)"
    )


if __name__ == "__main__":
    main()
