"""``switchyard engine serve --model PATH [...]``: run the standalone engine server."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchyard engine", description="Switchyard's local inference engine"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="serve one model over an OpenAI-compatible HTTP API")
    serve.add_argument(
        "--model", default=None, help="HF model directory or .gguf file (default: bundled SmolLM2)"
    )
    serve.add_argument("--served-model-name", default=None, help="name clients use (default: from the model)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--dtype",
        default="auto",
        help="auto (a GGUF file's quantization as stored, bfloat16 compute), bfloat16, float16 or float32",
    )
    serve.add_argument(
        "--quantization",
        default=None,
        help="q8_0: quantize the checkpoint's dense weight matrices to Q8_0 as they load "
        "(CPU, bfloat16; about half the memory of bf16). Default: load them as --dtype says",
    )
    serve.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    serve.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="split the model over N ranks, one process each (CPU: sharing its cores; CUDA: N GPUs "
        "from --device's)",
    )
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument(
        "--default-max-tokens",
        type=int,
        default=512,
        help="completion budget of a chat request naming no max_tokens, unless the model's "
        "generation_config sets max_new_tokens (0: up to the context length)",
    )
    serve.add_argument("--max-num-seqs", type=int, default=64)
    serve.add_argument("--max-num-batched-tokens", type=int, default=2048)
    serve.add_argument("--block-size", type=int, default=16)
    serve.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    serve.add_argument("--num-threads", type=int, default=None, help="CPU threads (default: all cores)")
    serve.add_argument("--no-prefix-caching", action="store_true")
    serve.add_argument(
        "--no-speculative-decoding",
        action="store_true",
        help="never verify prompt-lookup draft tokens (on by default for small batches)",
    )
    serve.add_argument(
        "--num-speculative-tokens", type=int, default=4, help="draft tokens verified per step at most"
    )
    serve.add_argument("--prompt-lookup-min", type=int, default=2, help="shortest n-gram looked up")
    serve.add_argument("--prompt-lookup-max", type=int, default=4, help="longest n-gram looked up")
    serve.add_argument(
        "--speculative-max-batch",
        type=int,
        default=2,
        help="speculate only while at most this many sequences run",
    )
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument(
        "--api-key",
        default=os.environ.get("SWITCHYARD_ENGINE_API_KEY"),
        help="require this bearer key on /v1/*",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser


def _show_engine_logs(level: str) -> None:
    """Print the engine's own log lines (the start-up memory report among them) beside uvicorn's,
    which configures only its own loggers: with no handler Python drops anything under WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    engine_logger = logging.getLogger("local_engine")
    engine_logger.addHandler(handler)
    engine_logger.setLevel(level.upper())


def main(argv: list[str] | None = None) -> int:
    """Entry point used by ``switchyard engine ...``."""
    args = build_parser().parse_args(argv)
    import uvicorn

    from local_engine.config import EngineConfig
    from local_engine.engine.async_engine import AsyncEngine
    from local_engine.loader import ModelLoadError
    from local_engine.server.app import create_app

    try:
        config = EngineConfig(
            model=args.model,
            dtype=args.dtype,
            quantization=args.quantization,
            device=args.device,
            tensor_parallel_size=args.tensor_parallel_size,
            block_size=args.block_size,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            default_max_tokens=args.default_max_tokens or None,
            kv_cache_memory_bytes=args.kv_cache_memory_bytes,
            gpu_memory_utilization=args.gpu_memory_utilization,
            enable_prefix_caching=not args.no_prefix_caching,
            speculative_decoding=not args.no_speculative_decoding,
            num_speculative_tokens=args.num_speculative_tokens,
            prompt_lookup_min=args.prompt_lookup_min,
            prompt_lookup_max=args.prompt_lookup_max,
            speculative_max_batch=args.speculative_max_batch,
            seed=args.seed,
            num_threads=args.num_threads,
        )
    except ValueError as exc:
        print(f"switchyard engine: {exc}", file=sys.stderr)
        return 2
    _show_engine_logs(args.log_level)
    app = create_app(AsyncEngine(config), args.served_model_name, args.api_key)
    try:
        uvicorn.run(
            app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5
        )
    except ModelLoadError as exc:
        print(f"switchyard engine: cannot load the model: {exc}", file=sys.stderr)
        return 1
    return 0
