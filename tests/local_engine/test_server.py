"""The engine's OpenAI API, driven by the official ``openai`` SDK: ``switchyard engine serve`` (bundled
SmolLM2) and the gateway's in-process ``local/`` provider (a tiny random model), streaming included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.engine_models import make_hf_model
from tests.support.engine_server import EngineServer, engine_serve_refusal
from tests.support.engine_server import engine_server as start_engine_server
from tests.support.gateway_process import gateway_process

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# For answers checked by content. Not QUESTION: its first token is a near-tie (0.09 logits apart in
# fp32) that the default quantized weights (dtype auto, int8 activations as llama.cpp) tip to
# "L'Étoile..." rather than "The capital of France is Paris".
ARITHMETIC = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineServer]:
    log_path = tmp_path_factory.mktemp("engine") / "engine.log"
    with start_engine_server(["--max-model-len", "512", "--log-level", "warning"], log_path) as server:
        yield server


@pytest.fixture(scope="module")
def client(engine_server: EngineServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=engine_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=120
    )


def test_models_lists_the_default_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["smollm2"]


def test_chat_greedy_answer_usage_and_stream_agree(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="smollm2", messages=ARITHMETIC, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    assert text is not None and "4" in text
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage is not None and full.usage.prompt_tokens > 20
    assert 0 < full.usage.completion_tokens <= 16
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    stream = client.chat.completions.create(
        model="smollm2",
        messages=ARITHMETIC,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_chat_stop_string_and_logprobs(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="smollm2",
        messages=ARITHMETIC,
        max_tokens=16,
        temperature=0,
        stop=["4"],
        logprobs=True,
        top_logprobs=2,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None and "4" not in choice.message.content
    assert choice.logprobs is not None and choice.logprobs.content
    first = choice.logprobs.content[0]
    assert first.logprob <= 0 and len(first.top_logprobs) == 2
    # greedy: the chosen token is the likeliest
    assert first.top_logprobs[0].token == first.token


def test_completions_n_echo_and_logprobs(client: openai.OpenAI) -> None:
    done = client.completions.create(
        model="smollm2",
        prompt="Once upon a time",
        max_tokens=5,
        n=2,
        temperature=0.8,
        seed=7,
        echo=True,
        logprobs=1,
    )
    assert [c.index for c in done.choices] == [0, 1]
    for choice in done.choices:
        assert choice.text.startswith("Once upon a time")
        assert choice.logprobs is not None and len(choice.logprobs.tokens) == len(
            choice.logprobs.token_logprobs
        )
    generated = sum(len(c.logprobs.tokens) for c in done.choices if c.logprobs is not None)
    assert done.usage is not None and done.usage.completion_tokens == generated
    assert done.usage.prompt_tokens == 4  # "Once upon a time"
    streamed = client.completions.create(
        model="smollm2", prompt="The sky is", max_tokens=4, temperature=0, stream=True
    )
    pieces = [c.choices[0].text for c in streamed if c.choices]
    again = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=4, temperature=0)
    assert "".join(pieces) == again.choices[0].text


def test_errors_are_openai_shaped(client: openai.OpenAI, engine_server: EngineServer) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=600)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as bad_param:
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2, top_p=3.0)
    assert "top_p" in str(bad_param.value)
    raw = httpx.post(engine_server.base_url + "/v1/chat/completions", content=b"{nope")
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_client_disconnect_aborts_the_request(engine_server: EngineServer) -> None:
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream(
        "POST", engine_server.base_url + "/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        # Keep the line iterator alive: breaking out of a `for` over it would finalise it, and
        # httpx then closes the response, i.e. disconnects before the check below.
        lines = response.iter_lines()
        seen = 0
        while seen < 3:
            seen += next(lines).startswith("data: ")
        stats = httpx.get(engine_server.base_url + "/engine/stats").json()
        assert stats["unfinished_requests"] == 1
    # The server notices the closed connection and aborts; wait for it (bounded, not a speed check).
    deadline = time.monotonic() + 60
    while httpx.get(engine_server.base_url + "/engine/stats").json()["unfinished_requests"]:
        assert time.monotonic() < deadline, "the abandoned request was never aborted"
        time.sleep(0.2)


def test_gateway_local_provider(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    make_hf_model("llama", model_dir)
    config = {
        "model_list": [
            {
                "model_name": "tiny",
                "params": {"model": "local/tiny", "model_path": str(model_dir), "dtype": "float32"},
            }
        ]
    }
    with gateway_process(config) as gw:
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "Hello world"}]
        full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
        assert full.usage is not None and full.usage.completion_tokens == 6
        assert full.choices[0].finish_reason == "length"
        chunks = list(
            client.chat.completions.create(
                model="tiny",
                messages=messages,
                max_tokens=6,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == full.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=5000)
        assert "maximum context length" in str(too_long.value), gw.logs()


def test_engine_cli_rejects_bad_settings() -> None:
    assert "dtype" in engine_serve_refusal(["--dtype", "int3"])
