"""The asyncio face of the engine: a background loop runs model steps in a worker thread (so the
event loop stays responsive) and routes each step's outputs to per-request queues.

All engine state is touched only between steps: additions and aborts queue up and are applied by
the loop before the next step, so an abandoned stream frees its blocks right after the step in
flight (if any) ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from local_engine.config import EngineConfig
from local_engine.engine.heap import IDLE_TRIM_S, release_free_heap
from local_engine.engine.llm_engine import LLMEngine
from local_engine.engine.outputs import CompletionOutput, RequestOutput
from local_engine.engine.stats import EngineSnapshot
from local_engine.loader import LoadedModel
from local_engine.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop failed; in-flight and new requests get this error."""


class AsyncEngine:
    """``await start()``, then ``generate(...)`` from any number of tasks; ``await shutdown()``."""

    def __init__(self, config: EngineConfig | None = None, loaded: LoadedModel | None = None) -> None:
        self.config = config or EngineConfig()
        self._loaded = loaded
        self.engine: LLMEngine | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-step")
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._pending_adds: list[tuple[str, list[int], SamplingParams]] = []
        self._pending_aborts: set[str] = set()
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._applied: asyncio.Event | None = None
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model and warm up (in the worker thread), then start the step loop."""
        if self.engine is not None:
            return
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(self._executor, LLMEngine, self.config, self._loaded)
        self._wakeup = asyncio.Event()
        self._applied = asyncio.Event()
        self._loop_task = asyncio.create_task(self._run(), name="engine-loop")

    async def shutdown(self) -> None:
        """Stop the loop; any unfinished request is aborted."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self.engine is not None:
            for request_id in list(self.engine.requests):
                self.engine.abort(request_id)
        for queue in self._queues.values():
            queue.put_nowait(EngineDeadError("engine shut down"))
        self._queues.clear()
        self._executor.shutdown(wait=True)

    # -- properties the server uses ------------------------------------------------------------

    def _engine(self) -> LLMEngine:
        if self.engine is None:
            raise RuntimeError("AsyncEngine.start() has not been awaited")
        return self.engine

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self._engine().tokenizer

    @property
    def model_name(self) -> str:
        return self._engine().model_name

    @property
    def max_model_len(self) -> int:
        return self._engine().max_model_len

    @property
    def generation_config(self) -> dict[str, Any]:
        """The model's generation defaults (``generation_config.json``, GGUF sampling metadata)."""
        return self._engine().loaded.generation_config

    def snapshot(self) -> EngineSnapshot | None:
        """The engine's numbers now, for metrics (None before ``start``)."""
        return self.engine.snapshot() if self.engine is not None else None

    @property
    def is_running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    # -- requests ------------------------------------------------------------------------------

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs (each with ``text_delta`` per completion) until it finishes.
        Closing or cancelling the iterator aborts the request and frees its blocks."""
        params = params or SamplingParams()
        engine = self._engine()
        if self._error is not None:
            raise EngineDeadError(f"engine loop failed: {self._error!r}")
        if request_id in self._queues:
            raise ValueError(f"request_id: {request_id!r} is already running")
        self._validate(engine, prompt_token_ids)
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._queues[request_id] = queue
        self._pending_adds.append((request_id, list(prompt_token_ids), params))
        self._kick()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self._pending_aborts.add(request_id)
                self._kick()

    @staticmethod
    def _validate(engine: LLMEngine, prompt_token_ids: list[int]) -> None:
        """The checks ``add_request`` makes, done up front so the caller gets the ``ValueError``."""
        if not prompt_token_ids:
            raise ValueError("prompt: must not be empty")
        if len(prompt_token_ids) >= engine.max_model_len:
            raise ValueError(
                f"prompt: {len(prompt_token_ids)} tokens leave no room to generate within max_model_len "
                f"{engine.max_model_len}"
            )

    async def abort(self, request_id: str) -> None:
        """Abort a request; its blocks are freed before the next step starts, and its stream ends
        with a final output whose unfinished completions have ``finish_reason`` "abort"."""
        self._pending_aborts.add(request_id)
        self._kick()
        await self.wait_applied()

    async def wait_applied(self) -> None:
        """Wait until queued additions/aborts have been applied to the engine."""
        while (self._pending_aborts or self._pending_adds) and self.is_running:
            assert self._applied is not None
            self._applied.clear()
            await self._applied.wait()

    def _kick(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # -- the loop --------------------------------------------------------------------------------

    def _apply_pending(self, engine: LLMEngine) -> None:
        aborts, self._pending_aborts = self._pending_aborts, set()
        adds, self._pending_adds = self._pending_adds, []
        for request_id, prompt, params in adds:
            if request_id in aborts:
                aborts.discard(request_id)
                self._deliver(self._never_started(request_id, prompt, params))
                continue
            try:
                engine.add_request(request_id, prompt, params)
            except ValueError as exc:
                queue = self._queues.get(request_id)
                if queue is not None:
                    queue.put_nowait(exc)
        for request_id in aborts:
            output = engine.abort(request_id)
            if output is not None:
                self._deliver(output)

    def _deliver(self, output: RequestOutput) -> None:
        queue = self._queues.get(output.request_id)
        if queue is not None:
            queue.put_nowait(output)

    @staticmethod
    def _never_started(request_id: str, prompt: list[int], params: SamplingParams) -> RequestOutput:
        outputs = [CompletionOutput(i, "", "", [], finish_reason="abort") for i in range(params.n)]
        return RequestOutput(request_id, prompt, outputs, finished=True)

    async def _idle_trim(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Wait for work up to ``IDLE_TRIM_S``; if none came, hand the freed heap back to the OS
        (in the step thread, off the event loop). Whether it trimmed."""
        assert self._wakeup is not None
        try:
            await asyncio.wait_for(self._wakeup.wait(), IDLE_TRIM_S)
            return False
        except TimeoutError:
            await loop.run_in_executor(self._executor, release_free_heap)
            return True

    async def _run(self) -> None:
        engine = self._engine()
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None and self._applied is not None
        worked = False  # steps ran since the heap was last trimmed
        try:
            while True:
                self._apply_pending(engine)
                self._applied.set()
                if not engine.has_unfinished():
                    self._wakeup.clear()
                    if self._pending_adds or self._pending_aborts:
                        continue
                    if worked:
                        worked = not await self._idle_trim(loop)
                        continue
                    await self._wakeup.wait()
                    continue
                worked = True
                outputs = await loop.run_in_executor(self._executor, engine.step)
                for output in outputs:
                    self._deliver(output)
                # Let consumers run (and enqueue aborts) between steps.
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            logger.exception("engine loop failed")
            self._error = exc
            for queue in self._queues.values():
                queue.put_nowait(EngineDeadError(f"engine loop failed: {exc!r}"))
            raise
