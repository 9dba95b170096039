"""Translated paths: Switchyard vs LiteLLM when the client's format is not the upstream's.

Paths (each plain and streamed, each against LiteLLM configured with the same provider pointed at
the same fake upstream, in the same run):

- ``anthropic``: the OpenAI SDK's chat body on /v1/chat/completions -> the Anthropic adapter
  (Messages API, SSE events),
- ``gemini``: the same -> the Gemini adapter (generateContent, streamGenerateContent?alt=sse), when
  Switchyard has one,
- ``bedrock``: the same -> the Bedrock adapter (Converse, ConverseStream's binary event stream,
  SigV4-signed with fake keys),
- ``messages``: an Anthropic Messages client on /v1/messages -> an OpenAI-compatible upstream
  (``hosted_vllm/``).

Method as in ``gateway_overhead.py`` (whose functions are imported): a precomputed fake upstream
(raw asyncio protocol, answering every provider's wire format by path), the gateway pinned to ONE
core (so req/s is req/s per core), a raw-socket keep-alive load generator on another core, gateway
CPU from /proc/<pid>/stat. Both gateways run at once on the same core with one config listing every
path's model; the runs alternate between them (path by path, Switchyard then LiteLLM, repeated),
so drift on a shared machine hits both. Every run is printed; the summary takes medians.

Per path it prints req/s, CPU ms per request, CPU us per streamed chunk and the Switchyard/LiteLLM
ratios. A streamed answer carries ``STREAM_CHUNKS`` text deltas (plus each format's opening and
closing events); "marginal" is what a chunk costs, (streamed - plain CPU per request) /
``STREAM_CHUNKS`` (the stream's own setup charged to its chunks too), and "us/chunk" the
streamed request's whole gateway CPU / ``STREAM_CHUNKS`` (auth, routing and the request's
translation charged to them as well). Bars: >= 15x LiteLLM req/s per core on every path and mode,
<= 30 us gateway CPU per streamed chunk (the marginal figure).

    .venv/bin/python bench/translated_paths.py [--quick] [--repeats N] [--paths anthropic,bedrock]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from gateway_overhead import (  # noqa: E402
    BENCH_KEY,
    STREAM_CHUNKS,
    _bench_database_url,
    _cpu_seconds,
    _ensure_litellm,
    _free_port,
    _machine,
    _pinned,
    _spawn,
    _stop,
    _upstream_responses,
    _use_uvloop,
    load_requests,
)

ANTHROPIC_MODEL = "claude-3-5-sonnet-20241022"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
GEMINI_MODEL = "gemini-1.5-flash"
TEXT = [f"tok{i} " for i in range(STREAM_CHUNKS)]
USAGE_IN, USAGE_OUT = 12, STREAM_CHUNKS


@dataclass(frozen=True)
class Path_:
    """One translated path: the door the client calls and the model name both configs give it."""

    name: str
    door: str  # "chat" (OpenAI chat body on /v1/chat/completions) or "messages" (/v1/messages)
    model: str
    litellm_params: str  # the deployment's litellm_params, YAML lines under it
    plain_text: str = "".join(TEXT)  # what a plain answer's text is


def _paths(up_port: int) -> list[Path_]:
    base = f"http://127.0.0.1:{up_port}"
    paths = [
        Path_(
            "anthropic",
            "chat",
            "bench-anthropic",
            f"model: anthropic/{ANTHROPIC_MODEL}\napi_base: {base}\napi_key: sk-ant-fake",
        ),
        Path_(
            "gemini",
            "chat",
            "bench-gemini",
            f"model: gemini/{GEMINI_MODEL}\napi_base: {base}/v1beta\napi_key: fake-gemini-key",
        ),
        Path_(
            "bedrock",
            "chat",
            "bench-bedrock",
            f"model: bedrock/converse/{BEDROCK_MODEL}\naws_bedrock_runtime_endpoint: {base}\n"
            "aws_access_key_id: AKIAFAKEFAKEFAKEFAKE\naws_secret_access_key: fake-secret\n"
            "aws_region_name: us-east-1",
        ),
        Path_(
            "messages",
            "messages",
            "bench-messages",
            # hosted_vllm rather than openai: for openai/ models LiteLLM's /v1/messages goes to the
            # Responses API, for other OpenAI-compatible upstreams to chat completions as ours does.
            f"model: hosted_vllm/bench-upstream\napi_base: {base}/v1\napi_key: sk-fake",
            "Hello! " * 10,  # gateway_overhead's OpenAI answer
        ),
    ]
    return paths


# --------------------------------------------------------------------------- fake upstream


def _http(content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"x-amzn-requestid: bench-request\r\n\r\n" + body


def _chunked(content_type: str, pieces: list[bytes]) -> bytes:
    out = f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n".encode()
    out += b"x-amzn-requestid: bench-request\r\n\r\n"
    for piece in pieces:
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def _sse(name: str, obj: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _anthropic_answers() -> tuple[bytes, bytes]:
    """https://docs.anthropic.com/en/api/messages and .../messages-streaming."""
    usage = {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT}
    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [{"type": "text", "text": "".join(TEXT)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    plain = _http("application/json", orjson.dumps(message))
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        _sse("ping", {"type": "ping"}),
    ]
    events += [
        _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in TEXT
    ]
    events += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": USAGE_OUT},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    return plain, _chunked("text/event-stream", events)


def _bedrock_answers() -> tuple[bytes, bytes]:
    """https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html and
    API_runtime_ConverseStream.html (frames encoded by the test fake's event-stream encoder)."""
    # Imported here: only the upstream process needs it (the load generator starts lighter).
    from tests.support.fake_bedrock import event as bedrock_event

    usage = {"inputTokens": USAGE_IN, "outputTokens": USAGE_OUT, "totalTokens": USAGE_IN + USAGE_OUT}
    answer = {
        "output": {"message": {"role": "assistant", "content": [{"text": "".join(TEXT)}]}},
        "stopReason": "end_turn",
        "usage": usage,
        "metrics": {"latencyMs": 42},
    }
    plain = _http("application/json", orjson.dumps(answer))
    frames = [bedrock_event("messageStart", {"role": "assistant"})]
    frames += [
        bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}}) for t in TEXT
    ]
    frames += [
        bedrock_event("contentBlockStop", {"contentBlockIndex": 0}),
        bedrock_event("messageStop", {"stopReason": "end_turn"}),
        bedrock_event("metadata", {"usage": usage, "metrics": {"latencyMs": 42}}),
    ]
    return plain, _chunked("application/vnd.amazon.eventstream", frames)


def _gemini_answers() -> tuple[bytes, bytes]:
    """https://ai.google.dev/api/generate-content (GenerateContentResponse; the stream is one per
    SSE ``data:`` line, the last with finishReason and usageMetadata)."""
    usage = {
        "promptTokenCount": USAGE_IN,
        "candidatesTokenCount": USAGE_OUT,
        "totalTokenCount": USAGE_IN + USAGE_OUT,
    }

    def response(text: str, finish: bool) -> dict:
        candidate: dict = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if finish:
            candidate["finishReason"] = "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": GEMINI_MODEL,
            "responseId": "bench-response",
        }

    plain = _http("application/json", orjson.dumps(response("".join(TEXT), True)))
    events = [
        b"data: " + orjson.dumps(response(t, i == len(TEXT) - 1)) + b"\r\n\r\n" for i, t in enumerate(TEXT)
    ]
    return plain, _chunked("text/event-stream", events)


class _Upstream(asyncio.Protocol):
    """Every provider's precomputed answers, chosen by the request path (and "stream" in the body)."""

    openai: dict[str, bytes]
    anthropic: tuple[bytes, bytes]
    bedrock: tuple[bytes, bytes]
    gemini: tuple[bytes, bytes]

    @classmethod
    def precompute(cls) -> None:
        cls.openai = _upstream_responses()
        cls.anthropic = _anthropic_answers()
        cls.bedrock = _bedrock_answers()
        cls.gemini = _gemini_answers()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            pos = head.find(b"content-length:")
            if pos >= 0:
                line_end = head.find(b"\r\n", pos)
                length = int(head[pos + 15 : line_end if line_end > 0 else None])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            self.transport.write(self._answer(head[: head.find(b"\r\n")], body))  # type: ignore[attr-defined]

    def _answer(self, request_line: bytes, body: bytes) -> bytes:
        stream = b'"stream":true' in body or b'"stream": true' in body
        if b"/converse-stream" in request_line:
            return self.bedrock[1]
        if b"/converse" in request_line:
            return self.bedrock[0]
        if b":streamgeneratecontent" in request_line:
            return self.gemini[1]
        if b":generatecontent" in request_line:
            return self.gemini[0]
        if b"/v1/messages" in request_line:
            return self.anthropic[1 if stream else 0]
        if not stream:
            return self.openai["plain"]
        usage = b'"include_usage":true' in body or b'"include_usage": true' in body
        return self.openai["sse_usage" if usage else "sse"]


def run_upstream(port: int) -> None:
    _use_uvloop()
    _Upstream.precompute()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --------------------------------------------------------------------------- load generator


def _request(port: int, door: str, model: str, stream: bool) -> bytes:
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello, how are you today?"}],
        "max_tokens": 20,
    }
    if stream:
        body["stream"] = True
    raw = json.dumps(body).encode()
    path = b"/v1/chat/completions" if door == "chat" else b"/v1/messages"
    extra = b"" if door == "chat" else b"anthropic-version: 2023-06-01\r\n"
    return (
        b"POST " + path + b" HTTP/1.1\r\nhost: 127.0.0.1:" + str(port).encode() + b"\r\n" + extra
        + b"content-type: application/json\r\nauthorization: Bearer " + BENCH_KEY.encode()
        + b"\r\ncontent-length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw
    )  # fmt: skip


def run_loadgen(port: int, door: str, model: str, stream: bool, concurrency: int, duration: float) -> None:
    _use_uvloop()
    request = _request(port, door, model, stream)
    result = asyncio.run(load_requests(port, lambda _w, _n: request, concurrency, duration))
    print(json.dumps(result))


def _loadgen(port: int, path: Path_, stream: bool, concurrency: int, duration: float, core: int) -> dict:
    cmd = [sys.executable, __file__, "--role", "loadgen", "--port", str(port), "--door", path.door]
    cmd += ["--model", path.model, "--concurrency", str(concurrency), "--duration", str(duration)]
    cmd += ["--stream"] if stream else []
    out = subprocess.run(_pinned(cmd, core), capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- checks and runs


def _exchange(port: int, request: bytes) -> bytes:
    """One request on a fresh connection; the whole answer (headers, de-chunked body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(request.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nconnection: close\r\n", 1))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2 :]
        body = out
    return head + b"\r\n\r\n" + body


def _check(port: int, path: Path_, stream: bool) -> None:
    """The answer is a 200 carrying every streamed piece of text in the client's format."""
    answer = _exchange(port, _request(port, path.door, path.model, stream))
    head, _, body = answer.partition(b"\r\n\r\n")
    ok = head.startswith(b"HTTP/1.1 200")
    if stream:
        events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
        ok = ok and all(t.encode() in body for t in TEXT) and len(events) >= STREAM_CHUNKS
    else:
        ok = ok and path.plain_text.strip().encode() in body
    if not ok:
        raise RuntimeError(
            f"{path.name} {'stream' if stream else 'plain'} answer is wrong:\n{answer[:1500]!r}"
        )


def _wait_ready(port: int, proc: subprocess.Popen, paths: list[Path_], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} during start")
        try:
            if _exchange(port, _request(port, paths[0].door, paths[0].model, False)).startswith(
                b"HTTP/1.1 200"
            ):
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("no healthy answer before the timeout")


@dataclass
class Run:
    path: str
    system: str
    mode: str
    repeat: int
    rps: float
    requests: int
    errors: int
    cpu_ms_per_req: float


def _run(
    system: str,
    port: int,
    proc: subprocess.Popen,
    path: Path_,
    stream: bool,
    repeat: int,
    concurrency: int,
    duration: float,
    core: int,
) -> Run:
    cpu0 = _cpu_seconds(proc.pid)
    r = _loadgen(port, path, stream, concurrency, duration, core)
    cpu1 = _cpu_seconds(proc.pid)
    per_req = (cpu1 - cpu0) * 1000 / r["requests"] if r["requests"] else float("nan")
    run = Run(
        path.name,
        system,
        "stream" if stream else "plain",
        repeat,
        r["rps"],
        r["requests"],
        r["errors"],
        per_req,
    )
    print(
        f"  {path.name:9s} {system:10s} {run.mode:6s} #{repeat}  {run.rps:8.0f} req/s  "
        f"cpu {per_req:7.3f} ms/req  errors {run.errors}",
        flush=True,
    )
    return run


def _config(paths: list[Path_], data_dir: Path | None) -> str:
    out = f"general_settings:\n  master_key: {BENCH_KEY}\n"
    if data_dir:
        out += f"  data_dir: {data_dir}\n"
    out += "model_list:\n"
    for p in paths:
        params = "".join(f"      {line}\n" for line in p.litellm_params.splitlines())
        out += f"  - model_name: {p.model}\n    litellm_params:\n{params}"
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _report(runs: list[Run], paths: list[Path_]) -> bool:
    print()
    print(f"translated paths, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (medians over repeats)")
    print(
        f"{'path':9s} {'system':10s} {'plain r/s':>9s} {'ms/req':>7s} {'stream r/s':>10s} {'ms/req':>7s} "
        f"{'us/chunk':>8s} {'marginal':>8s}"
    )
    stats: dict[tuple[str, str], dict[str, float]] = {}
    for p in paths:
        for system in ("switchyard", "litellm"):
            mine = [r for r in runs if r.path == p.name and r.system == system]
            if not mine:
                continue
            s = {
                f"{mode}_{k}": _median([getattr(r, k) for r in mine if r.mode == mode])
                for mode in ("plain", "stream")
                for k in ("rps", "cpu_ms_per_req")
            }
            s["chunk_us"] = s["stream_cpu_ms_per_req"] * 1000 / STREAM_CHUNKS
            s["marginal_us"] = (s["stream_cpu_ms_per_req"] - s["plain_cpu_ms_per_req"]) * 1000 / STREAM_CHUNKS
            stats[(p.name, system)] = s
            print(
                f"{p.name:9s} {system:10s} {s['plain_rps']:9.0f} {s['plain_cpu_ms_per_req']:7.3f} "
                f"{s['stream_rps']:10.0f} {s['stream_cpu_ms_per_req']:7.3f} {s['chunk_us']:8.1f} "
                f"{s['marginal_us']:8.1f}"
            )
    print()
    print("Switchyard / LiteLLM (same core, same run); bars: req/s >= x15, gateway CPU per chunk <= 30 us")
    passed = True
    for p in paths:
        sy, ll = stats.get((p.name, "switchyard")), stats.get((p.name, "litellm"))
        if not sy:
            continue
        line = f"  {p.name:9s}"
        chunk_ok = sy["marginal_us"] <= 30
        passed = passed and chunk_ok
        if ll:
            for mode in ("plain", "stream"):
                rps = sy[f"{mode}_rps"] / ll[f"{mode}_rps"] if ll[f"{mode}_rps"] else float("inf")
                cpu = ll[f"{mode}_cpu_ms_per_req"] / sy[f"{mode}_cpu_ms_per_req"]
                ok = rps >= 15
                passed = passed and ok
                line += f"  {mode} req/s x{rps:5.1f} {'ok ' if ok else 'LOW'} (LiteLLM CPU/req x{cpu:5.1f})"
        line += f"  {sy['marginal_us']:.1f} us/chunk {'ok' if chunk_ok else 'OVER'}"
        print(line)
    return passed


# --------------------------------------------------------------------------- orchestration


def orchestrate(args: argparse.Namespace) -> int:
    cores = sorted(os.sched_getaffinity(0))
    gateway_core, upstream_core = cores[-1], cores[0]
    load_core = cores[1] if len(cores) >= 3 else cores[0]
    duration = 1.0 if args.quick else args.duration
    repeats = args.repeats or (2 if args.quick else 3)
    print(f"machine: {_machine()}")
    print(
        f"cores: upstream {upstream_core}, load generator {load_core}, gateway {gateway_core}; "
        f"{duration}s per run, {repeats} repeats, concurrency {args.concurrency}, "
        f"{STREAM_CHUNKS} chunks a stream"
    )
    tmp = Path(tempfile.mkdtemp(prefix="sy-translated-"))
    up_port = _free_port()
    wanted = set(args.paths.split(",")) if args.paths else None
    paths = [p for p in _paths(up_port) if wanted is None or p.name in wanted]
    from providers.registry import ProviderRegistry

    if any(p.name == "gemini" for p in paths) and not ProviderRegistry.default().has("gemini"):
        print("gemini: Switchyard has no gemini adapter yet; path skipped")
        paths = [p for p in paths if p.name != "gemini"]

    clean_env: dict[str, str | None] = {"DATABASE_URL": None, "REDIS_URL": None, "SWITCHYARD_CONFIG": None}
    clean_env |= {name: None for name in os.environ if name.startswith(("AWS_", "ANTHROPIC_", "GEMINI_"))}
    sy_env = dict(clean_env)
    db_url = _bench_database_url()
    if db_url:
        sy_env["DATABASE_URL"] = db_url
    (tmp / "switchyard.yaml").write_text(_config(paths, tmp / "data"))
    (tmp / "litellm.yaml").write_text(_config(paths, None))
    upstream = _spawn([sys.executable, __file__, "--role", "upstream", "--port", str(up_port)], upstream_core)
    systems: dict[str, tuple[int, subprocess.Popen]] = {}
    runs: list[Run] = []
    try:
        port = _free_port()
        cmd = [str(REPO / ".venv" / "bin" / "switchyard"), "serve", "--config", str(tmp / "switchyard.yaml")]
        proc = _spawn([*cmd, "--port", str(port)], gateway_core, sy_env, tmp / "switchyard.log")
        systems["switchyard"] = (port, proc)
        print(f"switchyard ready after {_wait_ready(port, proc, paths, 120):.1f}s", flush=True)
        if not args.skip_litellm:
            port = _free_port()
            cmd = [str(_ensure_litellm()), "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1"]
            env = {**clean_env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
            proc = _spawn([*cmd, "--port", str(port)], gateway_core, env, tmp / "litellm.log")
            systems["litellm"] = (port, proc)
            print(f"litellm ready after {_wait_ready(port, proc, paths, 240):.1f}s", flush=True)
        for port, _ in systems.values():
            for p in paths:
                for stream in (False, True):
                    _check(port, p, stream)
                    _loadgen(port, p, stream, 8, min(0.5, duration), load_core)  # warm-up
        print("every path answers correctly on every system; runs:", flush=True)
        for repeat in range(1, repeats + 1):
            for p in paths:
                for system, (port, proc) in systems.items():
                    for stream in (False, True):
                        runs.append(
                            _run(system, port, proc, p, stream, repeat, args.concurrency, duration, load_core)
                        )
    except RuntimeError as exc:
        for name in systems:
            tail = (tmp / f"{name}.log").read_text(errors="replace")[-3000:]
            print(f"--- {name} log tail:\n{tail}")
        print(f"failed: {exc}")
        return 1
    finally:
        for _, proc in systems.values():
            _stop(proc)
        _stop(upstream)

    passed = _report(runs, paths)
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    (out_dir / f"translated_paths-{stamp}.json").write_text(
        json.dumps({"machine": _machine(), "runs": [asdict(r) for r in runs]}, indent=2)
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if passed else 2


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 s runs, 2 repeats")
    parser.add_argument("--skip-litellm", action="store_true", help="do not measure LiteLLM")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=0, help="alternations (default 3, --quick 2)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--paths", default="", help="comma-separated: anthropic,gemini,bedrock,messages")
    parser.add_argument("--role", choices=["orchestrate", "upstream", "loadgen"], default="orchestrate")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--door", default="chat")
    parser.add_argument("--model", default="")
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port)
        return 0
    if args.role == "loadgen":
        run_loadgen(args.port, args.door, args.model, args.stream, args.concurrency, args.duration)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
