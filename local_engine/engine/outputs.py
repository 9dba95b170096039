"""What the engine hands back per request and step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenLogprob:
    """A generated token's raw model logprob and the ``top`` likeliest tokens as ``(id, text, logprob)``."""

    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass(slots=True)
class CompletionOutput:
    """One of a request's ``n`` completions. ``text``, ``token_ids`` and ``logprobs`` are cumulative;
    ``text_delta`` is the text new since the previous output of this request."""

    index: int
    text: str
    text_delta: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    logprobs: list[TokenLogprob] | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    num_new_tokens: int = 0  # tokens appended since the previous output (token_ids[-num_new_tokens:])

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestTimes:
    """When a request went through the engine (``time.monotonic()``): queued from ``arrival`` to
    ``scheduled`` (its first step began), prefill until ``first_token``, decode until ``finished``."""

    arrival: float
    scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


@dataclass(slots=True)
class RequestOutput:
    """A request's state after a step: all its completions, ``finished`` once every one is done."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    times: RequestTimes | None = None  # the request's phases so far (the same object every step)
