"""Tensor parallelism over gloo on the CPU: a TP=2 engine (this process rank 0, one spawned worker
process) against the single-process engine on tiny random models, a killed rank, and the server."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch

from local_engine.config import EngineConfig
from local_engine.distributed.executor import TensorParallelError, TensorParallelRunner
from local_engine.engine.llm_engine import LLMEngine
from local_engine.loader import ModelLoadError
from local_engine.sampling_params import SamplingParams
from local_engine.server.cli import build_parser
from tests.support.engine_models import make_hf_model, write_gguf_like_llama_cpp
from tests.support.engine_server import engine_server

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], list(range(100, 137))]  # the last spans 3 blocks
# Each model exercises another split: llama with a vocabulary that does not divide by 2 (padded
# shards), qwen2 (q/k/v biases) with one KV head replicated on both ranks, qwen3 (q/k norms),
# gemma2 (its own layer stack, soft-capped logits), phi3 (fused q/k/v and gate/up checkpoint tensors).
MODELS = {
    "llama": {"vocab_size": 401},
    "qwen2": {"num_key_value_heads": 1},
    "qwen3": {},
    "gemma2": {},
    "phi3": {},
}


def _config(model_dir: Path, tp: int, **overrides: object) -> EngineConfig:
    settings: dict[str, object] = dict(
        model=str(model_dir),
        dtype="float32",
        tensor_parallel_size=tp,
        max_model_len=128,
        block_size=16,
        max_num_seqs=8,
        speculative_decoding=False,
    )
    settings.update(overrides)
    return EngineConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(params=sorted(MODELS))
def engines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LLMEngine, LLMEngine]]:
    """The single-process engine and the TP=2 one over the same tiny random checkpoint."""
    make_hf_model(request.param, tmp_path, **MODELS[request.param])
    single = LLMEngine(_config(tmp_path, 1))
    parallel = LLMEngine(_config(tmp_path, 2))
    assert isinstance(parallel.runner, TensorParallelRunner)
    try:
        yield single, parallel
    finally:
        parallel.runner.shutdown()


def _prefill_logits(engine: LLMEngine) -> torch.Tensor:
    """The logits of every prompt token of ``PROMPTS``, batched in one step through the runner."""
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"logits-{i}", prompt, SamplingParams(temperature=0.0, max_tokens=1))
    batch = engine.scheduler.schedule()
    assert batch.num_tokens == [len(p) for p in PROMPTS]
    runner = engine.runner
    with torch.inference_mode():
        hidden = runner.forward(runner.prepare(batch))
        logits = runner.model.compute_logits(hidden)
    for i in range(len(PROMPTS)):
        engine.abort(f"logits-{i}")
    return logits


def _generate(engine: LLMEngine) -> list[tuple[list[int], list[list[float]]]]:
    """Greedy completions of ``PROMPTS`` (run together) with each step's top-5 logprobs."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=5)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"gen-{i}", prompt, params)
    finals = {}
    while engine.has_unfinished():
        for output in engine.step():
            if output.finished:
                finals[output.request_id] = output.outputs[0]
    results = []
    for i in range(len(PROMPTS)):
        out = finals[f"gen-{i}"]
        assert out.logprobs is not None
        results.append((out.token_ids, [[v for _, _, v in step.top] for step in out.logprobs]))
    return results


def test_logits_and_greedy_outputs_equal_the_single_process_engine(
    engines: tuple[LLMEngine, LLMEngine],
) -> None:
    single, parallel = engines
    expected_logits = _prefill_logits(single)
    logits = _prefill_logits(parallel)
    num_tokens = sum(len(p) for p in PROMPTS)
    assert logits.shape == expected_logits.shape == (num_tokens, single.loaded.config.vocab_size)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)

    expected = _generate(single)
    got = _generate(parallel)
    for (tokens, logprobs), (want_tokens, want_logprobs) in zip(got, expected, strict=True):
        assert tokens == want_tokens and len(tokens) == 24
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(want_logprobs), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llama-tp")
    make_hf_model("llama", path)
    return path


def test_speculative_decoding_over_two_ranks(llama_dir: Path) -> None:
    """Verifying drafts takes logits at several rows per sequence; the ranks follow that too."""
    prompt = [5, 6, 7, 8] * 4  # repeats: prompt lookup finds drafts
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    outputs = {}
    for tp, speculate in ((1, False), (2, True)):
        engine = LLMEngine(_config(llama_dir, tp, speculative_decoding=speculate))
        try:
            engine.add_request("spec", prompt, params)
            while engine.has_unfinished():
                for output in engine.step():
                    outputs[tp] = (output.outputs[0].token_ids, engine.num_steps)
        finally:
            if isinstance(engine.runner, TensorParallelRunner):
                engine.runner.shutdown()
    (plain, plain_steps), (speculated, speculated_steps) = outputs[1], outputs[2]
    assert speculated == plain and len(plain) == 40
    assert speculated_steps < plain_steps  # drafts were accepted


def test_a_killed_rank_ends_the_engine_within_seconds(llama_dir: Path) -> None:
    engine = LLMEngine(_config(llama_dir, 2))
    runner = engine.runner
    assert isinstance(runner, TensorParallelRunner)
    try:
        engine.add_request("long", PROMPTS[0], SamplingParams(max_tokens=100_000, ignore_eos=True))
        steps = 0
        failure: list[BaseException] = []
        ended = threading.Event()

        def loop() -> None:
            nonlocal steps
            try:
                while True:
                    engine.step()
                    steps += 1
            except BaseException as exc:  # the error under test
                failure.append(exc)
            finally:
                ended.set()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        while steps < 5 and not ended.is_set():
            time.sleep(0.01)
        assert not ended.is_set(), failure
        killed_at = time.monotonic()
        os.kill(runner.worker_pids[0], signal.SIGKILL)
        assert ended.wait(10), "the engine kept stepping with a dead rank"
        assert time.monotonic() - killed_at < 6
        assert isinstance(failure[0], TensorParallelError)
        message = str(failure[0])
        assert "rank 1" in message and "SIGKILL" in message, message
        # And every later step fails at once, naming the rank, rather than waiting on the group.
        started = time.monotonic()
        with pytest.raises(TensorParallelError, match="rank 1"):
            engine.step()
        assert time.monotonic() - started < 1
    finally:
        runner.shutdown()


def test_a_quantized_gguf_is_dequantized_for_its_shards(tmp_path: Path) -> None:
    """dtype auto keeps a GGUF file's quantization on one rank; with two, each rank loads its shard
    of the dequantized weights (llama.cpp's permuted Q/K rows restored before the split)."""
    gguf = pytest.importorskip("gguf")
    reference = make_hf_model("llama", tmp_path / "hf")
    layers = range(reference.config.num_hidden_layers)
    kinds = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_down")
    quant = {f"blk.{i}.{kind}.weight": gguf.GGMLQuantizationType.Q8_0 for i in layers for kind in kinds}
    path = write_gguf_like_llama_cpp(reference, tmp_path / "hf", tmp_path / "q8.gguf", quant=quant)
    single = LLMEngine(_config(path, 1, dtype="bfloat16"))
    parallel = LLMEngine(_config(path, 2, dtype="auto"))
    try:
        params = list(parallel.loaded.model.parameters())
        assert all(p.dtype == torch.bfloat16 and not hasattr(p, "ggml_type") for p in params)
        logits, expected = _prefill_logits(parallel), _prefill_logits(single)
        # bf16 partial sums add up in another order across two ranks: close, not equal.
        assert torch.nn.functional.cosine_similarity(logits, expected, dim=-1).min() > 0.999
    finally:
        assert isinstance(parallel.runner, TensorParallelRunner)
        parallel.runner.shutdown()


def test_a_model_that_does_not_split_is_refused_before_any_rank_starts(llama_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="4 attention heads do not split over 3 ranks"):
        LLMEngine(_config(llama_dir, 3))


def test_cli_flag() -> None:
    args = build_parser().parse_args(["serve", "--tensor-parallel-size", "2"])
    assert args.tensor_parallel_size == 2
    assert build_parser().parse_args(["serve"]).tensor_parallel_size == 1
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineConfig(tensor_parallel_size=0)
    with pytest.raises(ValueError, match="not with tensor_parallel_size > 1"):
        EngineConfig(tensor_parallel_size=2, quantization="q8_0")


def test_serve_with_two_ranks(llama_dir: Path, tmp_path: Path) -> None:
    """``switchyard engine serve --tensor-parallel-size 2`` answers as the single-process engine does,
    and takes its worker rank with it when it stops."""
    expected = LLMEngine(_config(llama_dir, 1))
    expected.add_request("x", "Hello world", SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    want = ""
    while expected.has_unfinished():
        for output in expected.step():
            want = output.outputs[0].text
    args = ["--model", str(llama_dir), "--dtype", "float32"]
    args += ["--tensor-parallel-size", "2", "--max-model-len", "128", "--log-level", "warning"]
    # Leaving the block sends SIGTERM to the server process alone: its ranks must go with it.
    with engine_server(args, tmp_path / "engine.log", timeout_s=120) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        done = client.completions.create(
            model=model, prompt="Hello world", max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
        )
        assert done.choices[0].text == want
    assert not server.killed, "the server did not stop on SIGTERM"
    process = server.process
    # No rank outlives the server: its whole process group is gone.
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a tensor-parallel rank outlived the server"
        time.sleep(0.2)
