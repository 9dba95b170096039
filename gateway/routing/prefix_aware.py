"""``prefix-cache-aware`` routing: send a request to the engine replica that already holds the
longest prefix of its prompt in its KV cache, so that replica skips that much prefill.

Which deployments take part: those marked ``model_info: {switchyard_engine: true}``, whose
``api_base`` is a ``switchyard engine serve`` (an OpenAI-compatible server, e.g. ``openai/<model>``
with ``api_base: http://host:8000/v1``). Each replica publishes a Bloom filter of its prefix cache's
block hashes at ``GET {api_base}/prefix_cache/summary`` (``local_engine.server.prefix_cache``); this
gateway polls it every ``SUMMARY_INTERVAL_S`` (a background task per replica, never on the request
path) from the first request that looks at the replica until ``IDLE_STOP_S`` after the last one, and
reads the replica's tokenizer once per fingerprint.

Per request: the prompt is rendered and tokenized as the engine would (its chat template and
tokenizer, ``local_engine.prefix_summary.prompt_ids``), cut into the engine's blocks and chain-hashed
like its block manager. A replica's cached prefix is the number of leading block hashes found in its
filter, or among the blocks this gateway sent it in the last ``RECENT_TTL_S`` (so a conversation's
next turn, arriving before the next poll, still finds the replica that served the last one). The
replica with the lowest score wins: its requests in flight x ``LOAD_TOKENS`` minus the prompt tokens
it holds cached (the fewest in flight among equals), and when no replica holds a block of the prompt
the pick is least-busy's. Deployments that are not engines, not yet summarised, or
whose summary is older than ``STALE_AFTER_S`` count as holding nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.routing.state import DeploymentState
from gateway.routing.strategies import LeastBusy
from local_engine.prefix_summary import (
    HASH_CHECK,
    PrefixSummary,
    PromptEncoder,
    chain_hashes,
    prompt_ids,
    tokenizer_from_spec,
)
from providers.formats.openai_chat import build_request
from providers.http import shared_client

if TYPE_CHECKING:
    import random

    from gateway.routing.model_group import Tier
    from gateway.routing.router import Invocation

log = logging.getLogger("switchyard.routing")

SUMMARY_INTERVAL_S = 1.0
IDLE_STOP_S = 60.0
STALE_AFTER_S = 10.0
RECENT_TTL_S = 10.0
# What one request already in flight on a replica costs a new one there, in prompt tokens it would
# have to prefill: each replica's score is its requests in flight x LOAD_TOKENS minus the prompt
# tokens it holds cached, lowest wins. A long conversation stays on its replica until that replica
# is several requests busier; a shared system prompt of a few dozen tokens never outweighs one
# request of load. (bench/prefix_routing.py: a rule of "at most as busy as the least busy" was no
# better than least-busy once users pause between turns; "one more" lost to it without pauses.)
LOAD_TOKENS = 256
_MAX_RECENT = 65536  # block hashes remembered per replica (a bound, not a tuning knob)
_FETCH_TIMEOUT_S = 2.0


@dataclass(slots=True)
class ReplicaView:
    """What this gateway knows about one engine replica's prefix cache."""

    base: str  # the engine's /v1 URL
    headers: dict[str, str]
    summary: PrefixSummary | None = None
    summary_at: float = 0.0  # monotonic time the summary was received
    used_at: float = 0.0  # monotonic time a request last looked at this replica
    polling: bool = False  # the poll loop runs
    # Block hashes this gateway sent here -> monotonic expiry.
    recent: dict[int, float] = field(default_factory=dict)

    def cached_blocks(self, hashes: Sequence[int], now: float) -> int:
        """How many leading ``hashes`` this replica holds, as far as is known."""
        summary = self.summary
        bloom = None
        if summary is not None and now - self.summary_at < STALE_AFTER_S and summary.hash_check == HASH_CHECK:
            bloom = summary.bloom
        recent = self.recent
        n = 0
        for h in hashes:
            expiry = recent.get(h)
            if (expiry is None or expiry < now) and (bloom is None or h not in bloom):
                break
            n += 1
        return n

    def remember(self, hashes: Sequence[int], now: float) -> None:
        recent = self.recent
        expiry = now + RECENT_TTL_S
        for h in hashes:
            recent[h] = expiry
        if len(recent) > _MAX_RECENT:
            self.recent = {h: t for h, t in recent.items() if t >= now}
            if len(self.recent) > _MAX_RECENT:  # a flood within the TTL: keep the newest half
                self.recent = dict(list(self.recent.items())[_MAX_RECENT // 2 :])


def _engine_base(state: DeploymentState) -> str | None:
    """The engine's ``/v1`` URL, for deployments marked as Switchyard engines."""
    dep = state.deployment
    if dep is None or not dep.model_info.get("switchyard_engine") or not dep.api_base:
        return None
    base = dep.api_base.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class PrefixDirectory:
    """Every engine replica's view and the tokenizers they use, refreshed in the background."""

    def __init__(self) -> None:
        self.views: dict[str, ReplicaView | None] = {}
        # Fingerprint -> the tokenizer's prompt encoder; None while it loads.
        self.tokenizers: dict[str, PromptEncoder | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def view(self, state: DeploymentState, now: float) -> ReplicaView | None:
        """``state``'s view (None for a deployment that is not an engine), polled when due."""
        try:
            view = self.views[state.id]
        except KeyError:
            base = _engine_base(state)
            api_key = state.deployment.api_key if base is not None else None
            headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
            view = self.views[state.id] = ReplicaView(base, headers) if base is not None else None
        if view is not None:
            view.used_at = now
            if not view.polling:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # a pick outside the gateway's loop (a benchmark): no polling
                    return view
                view.polling = True
                task = loop.create_task(self._poll_while_used(view))
                self._tasks.add(task)  # held until done: the loop keeps only weak references
                task.add_done_callback(self._tasks.discard)
        return view

    async def _get(self, view: ReplicaView, path: str) -> Any:
        resp = await shared_client().get(view.base + path, headers=view.headers, timeout=_FETCH_TIMEOUT_S)
        if resp.status_code != 200:
            raise ValueError(f"{path} answered {resp.status_code}")
        return resp.content

    async def _poll_while_used(self, view: ReplicaView) -> None:
        try:
            while time.monotonic() - view.used_at < IDLE_STOP_S:
                await self._poll(view)
                await asyncio.sleep(SUMMARY_INTERVAL_S)
        finally:
            view.polling = False

    async def _poll(self, view: ReplicaView) -> None:
        try:
            summary = PrefixSummary.from_json(orjson.loads(await self._get(view, "/prefix_cache/summary")))
        except Exception as exc:  # a replica down or not an engine: it just counts as holding nothing
            log.debug("prefix-cache summary from %s: %s", view.base, exc)
            return
        now = time.monotonic()
        newly_foreign = view.summary is None or view.summary.hash_check == HASH_CHECK
        if summary.hash_check != HASH_CHECK and newly_foreign:
            log.warning(
                "engine %s hashes prefix blocks differently (another Python?): its prefix-cache "
                "summary is ignored, only this gateway's own routing history is used",
                view.base,
            )
        view.summary, view.summary_at = summary, now
        view.recent = {h: t for h, t in view.recent.items() if t >= now}
        if summary.tokenizer not in self.tokenizers:
            self.tokenizers[summary.tokenizer] = None
            try:
                raw = await self._get(view, "/prefix_cache/tokenizer")
                # Parsing a large vocabulary takes tens of milliseconds: not on the event loop.
                tok = await asyncio.to_thread(lambda: PromptEncoder(tokenizer_from_spec(orjson.loads(raw))))
            except Exception as exc:
                log.warning("cannot read the tokenizer of engine %s: %s", view.base, exc)
                del self.tokenizers[summary.tokenizer]
                return
            self.tokenizers[summary.tokenizer] = tok


class PrefixCacheAware:
    """The ``prefix-cache-aware`` strategy; ``for_request`` binds it to one request's prompt."""

    name = "prefix-cache-aware"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.fallback = LeastBusy(rng)
        self.directory = PrefixDirectory()

    def choose(
        self, tier: Tier, candidates: Sequence[DeploymentState], complete: bool, stream: bool, minute: int
    ) -> DeploymentState:
        # Without a request (no prompt to look up) there is nothing to prefer.
        return self.fallback.choose(tier, candidates, complete, stream, minute)

    def for_request(self, inv: Invocation) -> RequestChoice:
        return RequestChoice(self, inv)


class RequestChoice:
    """``PrefixCacheAware`` for one request: its prompt's block hashes, computed once per tokenizer."""

    __slots__ = ("_hashes", "inv", "strategy")

    def __init__(self, strategy: PrefixCacheAware, inv: Invocation) -> None:
        self.strategy = strategy
        self.inv = inv
        self._hashes: dict[tuple[str, int], list[int]] = {}

    def hashes(self, summary: PrefixSummary, encoder: PromptEncoder) -> list[int]:
        key = (summary.tokenizer, summary.block_size)
        hashes = self._hashes.get(key)
        if hashes is None:
            inv = self.inv
            body = inv.body
            if body is None and inv.request is not None:
                body = build_request(inv.request)
            ids = prompt_ids(encoder.tok, inv.operation, body, encoder) if body is not None else None
            hashes = self._hashes[key] = chain_hashes(ids, summary.block_size) if ids else []
        return hashes

    def choose(
        self, tier: Tier, candidates: Sequence[DeploymentState], complete: bool, stream: bool, minute: int
    ) -> DeploymentState:
        directory = self.strategy.directory
        now = time.monotonic()
        best: DeploymentState | None = None
        best_view: ReplicaView | None = None
        best_hashes: list[int] = []
        best_cost = 0
        any_cached = False
        for d in candidates:
            view = directory.view(d, now)  # also keeps every replica's summary polled
            hashes: list[int] = []
            cached_tokens = 0
            if view is not None and view.summary is not None:
                encoder = directory.tokenizers.get(view.summary.tokenizer)
                if encoder is not None:
                    hashes = self.hashes(view.summary, encoder)
                    cached_tokens = view.cached_blocks(hashes, now) * view.summary.block_size
            any_cached = any_cached or cached_tokens > 0
            # The prompt's length is the same everywhere, so it cancels out of the comparison.
            cost = d.in_flight * LOAD_TOKENS - cached_tokens
            if best is None or cost < best_cost or (cost == best_cost and d.in_flight < best.in_flight):
                best, best_view, best_hashes, best_cost = d, view, hashes, cost
        if not any_cached or best is None:
            best = self.strategy.fallback.choose(tier, candidates, complete, stream, minute)
            best_view = directory.views.get(best.id)
            best_hashes = []
            if best_view is not None and best_view.summary is not None:
                encoder = directory.tokenizers.get(best_view.summary.tokenizer)
                best_hashes = self.hashes(best_view.summary, encoder) if encoder is not None else []
        if best_view is not None and best_hashes:
            best_view.remember(best_hashes, now)
        return best
