"""Offline batch generation: ``LLM(config_or_path).generate(prompts, params)``."""

from __future__ import annotations

from pathlib import Path

from local_engine.config import EngineConfig
from local_engine.engine.llm_engine import LLMEngine
from local_engine.engine.outputs import RequestOutput
from local_engine.sampling_params import SamplingParams


class LLM:
    """Runs prompts to completion with continuous batching and returns outputs in prompt order."""

    def __init__(self, config: EngineConfig | str | Path | None = None, **overrides: object) -> None:
        if not isinstance(config, EngineConfig):
            config = EngineConfig(model=config, **overrides)  # type: ignore[arg-type]
        elif overrides:
            raise TypeError("pass either an EngineConfig or keyword overrides, not both")
        self.config = config
        self.engine = LLMEngine(config)
        self.tokenizer = self.engine.tokenizer
        self._counter = 0

    def generate(
        self,
        prompts: str | list[str] | list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); one ``RequestOutput`` per prompt, in order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError("params: need one SamplingParams per prompt (or a single one)")
        ids: list[str] = []
        for prompt, p in zip(prompts, params_list, strict=True):
            request_id = f"llm-{self._counter}"
            self._counter += 1
            self.engine.add_request(request_id, prompt, p)  # type: ignore[arg-type]
            ids.append(request_id)
        final: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished():
            for output in self.engine.step():
                if output.finished:
                    final[output.request_id] = output
        return [final[i] for i in ids]
