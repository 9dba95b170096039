"""Prefix-cache-aware routing against simple-shuffle and least-busy on a multi-turn chat workload.

Two ``switchyard engine serve`` replicas of the bundled SmolLM2-135M (CPU, one thread each) and
three gateways in front of both, one per strategy (``prefix-cache-aware``, ``simple-shuffle``,
``least-busy``). A phase runs ``--conversations`` chats concurrently through one gateway, each
``--turns`` turns long, every turn the whole history plus a new user message (streamed, greedy,
``--max-tokens`` generated with ``ignore_eos`` so every strategy decodes the same amount), sent
``--think-s`` (mean, uniformly 0.5-1.5x) after the last reply. With no think time (a closed loop)
every replica always holds all it can and time to first token mostly measures queueing behind the
other conversations' prefills and decodes, not the prefill a cached prefix saves. Phases
alternate between the strategies (the order rotates each repeat) in one run, and each phase's
conversations start with their own tag, so no phase finds another's prompts cached; within a phase
the conversations share a system prompt, as real ones do.

Per phase: time to first token (client-side, first streamed content) p50 and p90, turns/s and
generated tok/s, and the replicas' prefix-cache hit rate (their ``/v1/prefix_cache/summary``
counters). Then per strategy the medians over repeats and the p50 TTFT ratio to simple-shuffle
(bar: prefix-cache-aware >= 1.5x). Nothing is pinned: the replicas, the gateways and this client
share the machine's cores with whatever else runs, so compare within one run.

    .venv/bin/python bench/prefix_routing.py                 # 3 repeats
    .venv/bin/python bench/prefix_routing.py --quick         # 1 repeat, smaller workload
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
SWITCHYARD = [str(REPO / ".venv" / "bin" / "switchyard")]
STRATEGIES = ["prefix-cache-aware", "simple-shuffle", "least-busy"]
WORDS = (
    "the a of to and in is it that for on with as was by at from this be or are an which have not "
    "system cache engine block token request model replica prefix memory latency throughput river "
    "mountain history science music garden kitchen winter summer ocean forest city market library "
    "question answer story reason detail example simple careful quick slow bright quiet ancient modern"
).split()
SYSTEM_PROMPT = (
    "You are a concise, friendly assistant for a team that runs language models on their own "
    "machines. Answer in plain words, keep answers short, say when you are unsure, and never invent "
    "facts about the user's systems. When asked about code, show the smallest working example."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{url} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"{url} did not become healthy:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def started(command: list[str], health: str, log: Path):  # type: ignore[no-untyped-def]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_healthy(health, process, log)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def engine_command(port: int, kv_cache_mib: int) -> list[str]:
    return [
        *SWITCHYARD,
        *("engine", "serve", "--port", str(port), "--num-threads", "1", "--max-model-len", "2048"),
        *("--max-num-seqs", "16", "--kv-cache-memory-bytes", str(kv_cache_mib << 20)),
        *("--log-level", "warning"),
    ]


def gateway_config(strategy: str, engines: list[str], directory: Path) -> Path:
    config = {
        "model_list": [
            {
                "model_name": "smollm2",
                "params": {"model": "openai/smollm2", "api_base": base + "/v1", "api_key": "none"},
                "model_info": {"id": f"replica-{i}", "switchyard_engine": True},
            }
            for i, base in enumerate(engines)
        ],
        "router_settings": {"routing_strategy": strategy, "num_retries": 0},
        "general_settings": {"data_dir": str(directory / f"data-{strategy}")},
    }
    path = directory / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Phase:
    strategy: str
    ttft: list[float] = field(default_factory=list)
    turns: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    hit_rate: float = 0.0

    def p(self, q: float) -> float:
        xs = sorted(self.ttft)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


def user_message(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "?"


async def turn(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, str, int]:
    """One streamed turn: (time to first content, the reply, tokens generated)."""
    body = {
        "model": "smollm2",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = 0.0
    parts: list[str] = []
    generated = 0
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(str(chunk["error"]))
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if not ttft:
                        ttft = time.perf_counter() - t0
                    parts.append(text)
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    return ttft or time.perf_counter() - t0, "".join(parts), generated


async def conversation(
    client: httpx.AsyncClient, url: str, tag: str, seed: int, args: argparse.Namespace, phase: Phase
) -> None:
    rng = random.Random(seed)
    messages = [{"role": "system", "content": f"[{tag}] {SYSTEM_PROMPT}"}]
    await asyncio.sleep(rng.uniform(0, args.think_s))  # conversations start spread out
    for i in range(args.turns):
        if i:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * args.think_s)  # the user reads and types
        messages.append({"role": "user", "content": user_message(rng, args.words)})
        ttft, reply, generated = await turn(client, url, messages, args.max_tokens)
        messages.append({"role": "assistant", "content": reply})
        phase.ttft.append(ttft)
        phase.turns += 1
        phase.tokens += generated


def counters(engines: list[str]) -> tuple[int, int]:
    queries = hits = 0
    for base in engines:
        c = httpx.get(base + "/v1/prefix_cache/summary", timeout=10).json()["prefix_cache"]
        queries += c["queries"]
        hits += c["hits"]
    return queries, hits


async def run_phase(
    gateway: str, strategy: str, tag: str, engines: list[str], args: argparse.Namespace
) -> Phase:
    phase = Phase(strategy)
    q0, h0 = counters(engines)
    limits = httpx.Limits(max_connections=args.conversations + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        url = gateway + "/v1/chat/completions"
        t0 = time.perf_counter()
        await asyncio.gather(
            *(conversation(client, url, f"{tag} c{i}", i, args, phase) for i in range(args.conversations))
        )
        phase.wall_s = time.perf_counter() - t0
    q1, h1 = counters(engines)
    phase.hit_rate = (h1 - h0) / max(1, q1 - q0)
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--words", type=int, default=80, help="words per user message")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--think-s",
        type=float,
        default=3.0,
        help="mean pause between a reply and the next turn (0: closed loop)",
    )
    parser.add_argument(
        "--kv-cache-mib",
        type=int,
        default=512,
        help="each replica's KV cache (SmolLM2: 23 KB a token); the default holds every conversation, "
        "64 holds about half of 4 conversations' final histories",
    )
    parser.add_argument("--quick", action="store_true", help="1 repeat, 6 conversations of 6 turns, 40 words")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.conversations, args.turns, args.words = 1, 6, 6, 40
    directory = Path(tempfile.mkdtemp(prefix="prefix-routing-"))
    print(
        f"# {args.repeats} repeats x {len(STRATEGIES)} strategies; {args.conversations} conversations x "
        f"{args.turns} turns, {args.words} words a message, {args.max_tokens} tokens a reply, "
        f"{args.think_s:g} s to think, {args.kv_cache_mib} MiB of KV cache a replica; "
        f"logs in {directory}"
    )
    with ExitStack() as stack:
        engines = []
        for i in range(2):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log = directory / f"engine-{i}.log"
            stack.enter_context(started(engine_command(port, args.kv_cache_mib), base + "/health", log))
            engines.append(base)
        gateways = {}
        for strategy in STRATEGIES:
            port = free_port()
            command = [*SWITCHYARD, "serve", "--config", str(gateway_config(strategy, engines, directory))]
            command += ["--port", str(port), "--workers", "1"]
            base = f"http://127.0.0.1:{port}"
            stack.enter_context(
                started(command, base + "/health/readiness", directory / f"gw-{strategy}.log")
            )
            gateways[strategy] = base
        # One request each so the prefix-aware gateway has read the summaries and the tokenizer.
        for base in gateways.values():
            httpx.post(
                base + "/v1/chat/completions",
                json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                timeout=120,
            ).raise_for_status()
        time.sleep(2.0)
        phases: list[Phase] = []
        for rep in range(args.repeats):
            order = STRATEGIES[rep % len(STRATEGIES) :] + STRATEGIES[: rep % len(STRATEGIES)]
            for strategy in order:
                phase = asyncio.run(
                    run_phase(gateways[strategy], strategy, f"run {rep} {strategy}", engines, args)
                )
                phases.append(phase)
                print(
                    f"repeat {rep} {strategy:>18}: TTFT p50 {phase.p(0.5) * 1000:7.0f} ms  p90 "
                    f"{phase.p(0.9) * 1000:7.0f} ms  {phase.turns / phase.wall_s:5.2f} turns/s  "
                    f"{phase.tokens / phase.wall_s:6.1f} gen tok/s  prefix-cache hits {phase.hit_rate:5.1%}  "
                    f"({phase.wall_s:.1f} s)",
                    flush=True,
                )
    print("\n# medians over repeats")
    p50 = {}
    for strategy in STRATEGIES:
        mine = [p for p in phases if p.strategy == strategy]
        p50[strategy] = statistics.median(p.p(0.5) for p in mine)
        print(
            f"{strategy:>18}: TTFT p50 {p50[strategy] * 1000:7.0f} ms  p90 "
            f"{statistics.median(p.p(0.9) for p in mine) * 1000:7.0f} ms  "
            f"{statistics.median(p.turns / p.wall_s for p in mine):5.2f} turns/s  "
            f"{statistics.median(p.tokens / p.wall_s for p in mine):6.1f} gen tok/s  "
            f"hits {statistics.median(p.hit_rate for p in mine):5.1%}"
        )
    ratio = p50["simple-shuffle"] / p50["prefix-cache-aware"]
    print(
        f"\np50 TTFT simple-shuffle / prefix-cache-aware = {ratio:.2f}x "
        f"(least-busy / prefix-cache-aware = {p50['least-busy'] / p50['prefix-cache-aware']:.2f}x); "
        f"bar 1.5x: {'met' if ratio >= 1.5 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
