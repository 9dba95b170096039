"""Speculative decoding by prompt lookup at batch 1: the local engine with it on and off.

One engine (the bundled SmolLM2-135M GGUF as served, ``dtype auto``) runs each prompt alone (or
``--batch N`` copies of it at once), greedy unless ``--temperature`` says otherwise, with
speculation on and then off (the proposer detached: same weights, same threads), alternating
the order every round so drift in the machine's load falls on both. Two workloads:

- ``edit``: "repeat / fix / rename in this code" prompts, where the answer copies much of the prompt
  (prompt lookup finds its drafts there),
- ``chat``: open questions, where it mostly has only its own output to look in.

Printed per run: decode tokens/s ((tokens - 1) / (finish - first token), summed over the workload's
prompts), end-to-end tokens/s, and, with speculation, the draft acceptance rate and tokens per
verifying step. Greedy outputs are checked identical both ways.

    .venv/bin/python bench/engine_speculative.py [--rounds 3] [--threads 2] [--max-tokens 160]
                                                 [--batch 1] [--temperature 0]
                                                 [--num-speculative-tokens 4] [--prompt-lookup-min 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from local_engine import EngineConfig, SamplingParams
from local_engine.engine.llm_engine import LLMEngine
from local_engine.engine.outputs import RequestOutput

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EngineConfig)}

CODE = '''def moving_average(values, window):
    """Average of each run of `window` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    result = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            result.append(total / window)
    return result
'''

EDIT = [
    f"Repeat this code exactly as it is:\n\n{CODE}",
    f"Rename the function to `rolling_mean` and return the whole code:\n\n{CODE}",
    f"Add type hints to this function and show the full result:\n\n{CODE}",
]
CHAT = [
    "Explain photosynthesis in simple terms.",
    "Give me three tips for writing clean Python code.",
    "Summarize the plot of Romeo and Juliet in a few sentences for a middle school student.",
]


def run_group(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[RequestOutput]:
    """The prompts all at once (a batch of ``len(prompts)``); their final outputs in order."""
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    return [final[str(i)] for i in range(len(prompts))]


@dataclasses.dataclass
class Tally:
    """One mode's totals over a workload's prompts."""

    decode_tokens: int = 0
    decode_s: float = 0.0
    tokens: int = 0
    total_s: float = 0.0
    outputs: list[list[int]] = dataclasses.field(default_factory=list)


def run_mode(
    engine: LLMEngine, prompts: list[list[int]], params: SamplingParams, speculate: bool, tally: Tally
) -> None:
    proposer = engine.proposer
    if not speculate:
        engine.proposer = None
    try:
        engine.block_manager.reset_prefix_cache()  # every run computes its prompts
        started = time.monotonic()
        outs = run_group(engine, prompts, params)
    finally:
        engine.proposer = proposer
    for out in outs:
        times = out.times
        assert times is not None and times.first_token is not None and times.finished is not None
        ids = out.outputs[0].token_ids
        tally.outputs.append(ids)
        tally.decode_tokens += len(ids) - 1
        tally.decode_s += times.finished - times.first_token
        tally.tokens += len(ids)
    tally.total_s += max(out.times.finished for out in outs if out.times and out.times.finished) - started


def workload(
    engine: LLMEngine, prompts: list[list[int]], params: SamplingParams, batch: int, first: bool
) -> tuple[dict[bool, Tally], tuple[int, int, int]]:
    """Each prompt (``batch`` copies of it at once) with speculation on and off back to back
    (``first`` going first, then alternating per prompt), so load on the machine falls on both
    alike; the drafts, draft tokens and accepted tokens the speculating runs spent."""
    stats = engine.stats
    before = (stats.spec_drafts, stats.spec_draft_tokens, stats.spec_accepted_tokens)
    tallies = {True: Tally(), False: Tally()}
    for i, prompt in enumerate(prompts):
        lead = first if i % 2 == 0 else not first
        for speculate in (lead, not lead):
            run_mode(engine, [prompt] * batch, params, speculate, tallies[speculate])
    after = (stats.spec_drafts, stats.spec_draft_tokens, stats.spec_accepted_tokens)
    return tallies, (after[0] - before[0], after[1] - before[1], after[2] - before[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--batch", type=int, default=1, help="copies of each prompt run at once")
    parser.add_argument("--temperature", type=float, default=0.0, help="> 0: sampled (outputs differ)")
    parser.add_argument("--num-speculative-tokens", type=int, default=_DEFAULTS["num_speculative_tokens"])
    parser.add_argument("--prompt-lookup-min", type=int, default=_DEFAULTS["prompt_lookup_min"])
    parser.add_argument("--prompt-lookup-max", type=int, default=_DEFAULTS["prompt_lookup_max"])
    args = parser.parse_args()
    engine = LLMEngine(
        EngineConfig(
            num_threads=args.threads,
            num_speculative_tokens=args.num_speculative_tokens,
            prompt_lookup_min=args.prompt_lookup_min,
            prompt_lookup_max=max(args.prompt_lookup_max, args.prompt_lookup_min),
            speculative_max_batch=args.batch,  # on at the batch measured, whatever the default
        )
    )
    tok = engine.tokenizer
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    sets = {
        name: [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}])) for p in prompts]
        for name, prompts in (("edit", EDIT), ("chat", CHAT))
    }
    print(
        f"SmolLM2-135M (bundled GGUF, dtype auto), {args.threads} threads, batch {args.batch}, "
        f"temperature {args.temperature}, "
        f"max_tokens {args.max_tokens}; k={args.num_speculative_tokens}, "
        f"lookup n={args.prompt_lookup_max}..{args.prompt_lookup_min}"
    )
    decode: dict[tuple[str, bool], list[float]] = {}
    for rnd in range(args.rounds):
        for name, prompts in sets.items():
            tallies, (drafts, drafted, accepted) = workload(
                engine, prompts, params, args.batch, first=rnd % 2 == 0
            )
            if params.greedy:
                assert tallies[True].outputs == tallies[False].outputs, f"{name}: outputs differ"
            for speculate in (True, False):
                t = tallies[speculate]
                rate = t.decode_tokens / t.decode_s
                decode.setdefault((name, speculate), []).append(rate)
                extra = ""
                if speculate and drafted:
                    extra = (
                        f"  acceptance {accepted / drafted:.2f}, "
                        f"{(accepted + drafts) / drafts:.2f} tokens per verifying step"
                    )
                print(
                    f"round {rnd} {name:4s} spec {'on ' if speculate else 'off'}: decode {rate:6.1f} tok/s, "
                    f"end-to-end {t.tokens / t.total_s:6.1f} tok/s ({t.tokens} tokens){extra}"
                )
    for name in sets:
        on, off = decode[(name, True)], decode[(name, False)]
        print(
            f"{name}: decode median on {statistics.median(on):.1f} / off {statistics.median(off):.1f} tok/s "
            f"= {statistics.median(on) / statistics.median(off):.2f}x "
            f"(per round: {', '.join(f'{a / b:.2f}' for a, b in zip(on, off, strict=True))})"
        )


if __name__ == "__main__":
    main()
