"""A model's own generation defaults and the default completion budget, through the engine server
(a tiny random model served on loopback, called with the ``openai`` SDK)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import torch

from local_engine import AsyncEngine, EngineConfig
from local_engine.generation_defaults import GenerationDefaults
from local_engine.loader import load_model
from local_engine.loader.hf import load_tokenizer
from local_engine.server.app import create_app
from tests.support.engine_models import make_hf_model, write_gguf_like_llama_cpp
from tests.support.loopback_server import LoopbackServer

HELLO = [{"role": "user", "content": "Hello world! The quick brown fox."}]
NO_EOS = {"ignore_eos": True}  # a random model may emit its eos token at any step


def _model_dir(root: Path, generation: dict[str, object]) -> Path:
    model_dir = root / "model"
    make_hf_model("llama", model_dir, seed=5)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, **generation}))
    return model_dir


@contextmanager
def _served(model_dir: Path, **engine: object) -> Iterator[openai.OpenAI]:
    config = EngineConfig(model=model_dir, dtype="float32", num_threads=1, warmup=False, **engine)  # type: ignore[arg-type]
    server = LoopbackServer(create_app(AsyncEngine(config), "tiny"), "engine", log_level="warning")
    port = server.start()
    try:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    finally:
        server.stop()


def test_the_models_sampling_applies_where_the_request_sets_none(tmp_path: Path) -> None:
    """generation_config.json says greedy and 6 new tokens: a request naming neither gets exactly that
    (the same text every time, equal to an explicit temperature 0); what a request sets wins."""
    with _served(_model_dir(tmp_path, {"temperature": 0.0, "max_new_tokens": 6})) as client:

        def chat(**kw: object) -> openai.types.chat.ChatCompletion:
            return client.chat.completions.create(model="tiny", messages=HELLO, extra_body=NO_EOS, **kw)  # type: ignore[arg-type]

        first, second = chat(), chat()
        greedy = chat(temperature=0.0, max_tokens=6)
        assert first.usage.completion_tokens == 6 and first.choices[0].finish_reason == "length"
        assert first.choices[0].message.content == second.choices[0].message.content
        assert first.choices[0].message.content == greedy.choices[0].message.content
        assert chat(max_tokens=3).usage.completion_tokens == 3
        sampled = chat(temperature=1.0, seed=7)
        assert sampled.choices[0].message.content != greedy.choices[0].message.content


def test_default_max_tokens_bounds_a_request_naming_none(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path, {})
    tokenizer = load_tokenizer(model_dir, {})
    prompt_len = len(tokenizer.encode(tokenizer.apply_chat_template(HELLO, add_generation_prompt=True)))
    # The context leaves the prompt 3 tokens, fewer than the default budget: those 3, not a 400.
    with _served(model_dir, default_max_tokens=7, max_model_len=prompt_len + 3) as client:
        reply = client.chat.completions.create(model="tiny", messages=HELLO, extra_body=NO_EOS)
        assert reply.usage.prompt_tokens == prompt_len
        assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"
        # An explicit max_tokens past the context is still the caller's error.
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=7)
        assert err.value.code == "context_length_exceeded"
    with _served(model_dir, default_max_tokens=7) as client:
        reply = client.chat.completions.create(model="tiny", messages=HELLO, extra_body=NO_EOS)
        assert reply.usage.completion_tokens == 7 and reply.choices[0].finish_reason == "length"


def test_gguf_sampling_metadata_becomes_the_defaults(tmp_path: Path) -> None:
    """llama.cpp's ``general.sampling.*`` keys, as a GGUF file carries them."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    model_dir = tmp_path / "model"
    reference = make_hf_model("llama", model_dir, seed=5)
    plain = write_gguf_like_llama_cpp(reference, model_dir, tmp_path / "plain.gguf")
    tagged = tmp_path / "tagged.gguf"
    writer = gguf.GGUFWriter(str(tagged), "llama")
    f32, u32 = gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.UINT32
    new = {
        "general.sampling.temp": MetadataDetails(f32, 0.25),
        "general.sampling.top_k": MetadataDetails(u32, 40),
        "general.sampling.top_p": MetadataDetails(f32, 0.5),
    }
    copy_with_new_metadata(gguf.GGUFReader(str(plain)), writer, new, [])
    loaded = load_model(tagged, dtype=torch.float32)
    defaults = GenerationDefaults.from_generation_config(loaded.generation_config, 512)
    assert defaults.sampling == {"temperature": 0.25, "top_k": 40, "top_p": 0.5}
    assert load_model(plain, dtype=torch.float32).generation_config.keys() == {"eos_token_id", "bos_token_id"}


def test_invalid_model_values_are_skipped_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING),
        _served(_model_dir(tmp_path, {"top_p": 0, "top_k": 2.5})) as client,
    ):
        reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
        assert reply.usage.completion_tokens >= 1
    assert "top_p=0" in caplog.text and "top_k=2.5" in caplog.text


def test_the_request_value_wins_and_max_new_tokens_beats_the_engine_default() -> None:
    class Req:
        temperature, top_p, top_k, min_p, repetition_penalty = 0.3, None, None, None, None

    defaults = GenerationDefaults.from_generation_config(
        {
            "temperature": 0.7,
            "top_k": 20,
            "repetition_penalty": 1.05,
            "max_new_tokens": 64,
            "do_sample": True,
        },
        512,
    )
    assert defaults.sampling_for(Req()) == {
        "temperature": 0.3,
        "top_p": 1.0,
        "top_k": 20,
        "min_p": 0.0,
        "repetition_penalty": 1.05,
    }
    assert defaults.max_tokens_for(10, 4096) == 64
    assert GenerationDefaults.from_generation_config({}, None).max_tokens_for(10, 4096) is None


def test_gateway_deployment_param_and_engine_cli_flag(tmp_path: Path) -> None:
    """``default_max_tokens`` as a ``local/`` deployment param (a bad one is the deployment's 400) and
    as ``switchyard engine serve --default-max-tokens``."""
    from tests.support.engine_server import engine_serve_refusal
    from tests.support.gateway_process import gateway_process

    model_dir = _model_dir(tmp_path, {})

    def local(name: str, budget: int) -> dict[str, object]:
        params = {"model": f"local/{name}", "model_path": str(model_dir), "dtype": "float32"}
        return {"model_name": name, "params": {**params, "default_max_tokens": budget}}

    with gateway_process({"model_list": [local("five", 5), local("bad", 0)]}) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="five", messages=HELLO, extra_body=NO_EOS)
        assert reply.usage is not None and reply.usage.completion_tokens == 5, gw.logs()
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="bad", messages=HELLO)
        assert "default_max_tokens" in str(err.value)
    assert "default_max_tokens" in engine_serve_refusal(["--default-max-tokens", "-3"])


def test_bundled_default_model_samples_as_its_card_recommends() -> None:
    """SmolLM2's GGUF carries no sampling keys; its model card recommends temperature 0.2, top_p 0.9."""
    loaded = load_model(None, dtype=torch.bfloat16)
    defaults = GenerationDefaults.from_generation_config(loaded.generation_config, 512)
    assert defaults.sampling == {"temperature": 0.2, "top_p": 0.9}
