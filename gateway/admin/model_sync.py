"""Serve the models stored in the database (``/model/new``) beside the config's, on every instance.

Each instance polls ``model_deployments`` every ``general_settings.model_refresh_interval_s``
(default 2 s): one cheap query returns a digest of every row's id and ``updated_at``; only when it
changed are the rows loaded, and only the model names whose rows changed are rebuilt
(``Router.replace_model``: config deployments of the same name plus the stored ones). So a model
added, changed or deleted through any instance is served, changed or gone on every other one within
about one interval; the instance that made the change applies it at once (``refresh`` after its
write). Polling rather than LISTEN/NOTIFY: it needs no dedicated connection and survives a
database restart without any reconnection logic.

A stored row that cannot be built (its secrets sealed with another key, an ``os.environ/NAME``
reference to a variable this instance lacks, a provider it does not know) is skipped with one error
line naming the model and the id, never its params.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from gateway import metrics
from gateway.admin.model_secrets import ParamCipher, SecretsUnavailable
from gateway.config import ENV_PREFIX, ModelEntry
from gateway.db import model_deployments as rows_sql
from gateway.db.guarded_pool import GuardedPool
from gateway.db.model_deployments import ModelRow
from gateway.routing.deployment import Deployment
from gateway.routing.router import Router
from providers.registry import ProviderRegistry, split_provider

log = logging.getLogger("switchyard.models")


class UnusableRow(Exception):
    """A stored model this instance cannot serve (the message names the field, never a value)."""


def build_deployment(
    row: ModelRow, cipher: ParamCipher, providers: ProviderRegistry, default_timeout: float
) -> Deployment:
    """The router's deployment for a stored row: secrets opened, ``os.environ/NAME`` resolved."""
    try:
        params = _resolve_env(cipher.open(row.params))
    except SecretsUnavailable as exc:
        raise UnusableRow(str(exc)) from None
    try:
        entry = ModelEntry.model_validate(
            {"model_name": row.model_name, "params": params, "model_info": {**row.model_info, "id": row.id}}
        )
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ["litellm_params" if p == "params" else str(p) for p in err["loc"]]
        raise UnusableRow(f"{'.'.join(loc)}: {err['msg'].removeprefix('Value error, ')}") from None
    provider, _ = split_provider(entry.params.model)
    if not providers.has(provider):
        raise UnusableRow(f"litellm_params.model: unknown provider {provider!r}")
    return Deployment.from_entry(entry, default_timeout)


def _resolve_env(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            var = value[len(ENV_PREFIX) :]
            if var not in os.environ:
                raise UnusableRow(f"litellm_params.{name}: environment variable {var} is not set")
            value = os.environ[var]
        out[name] = value
    return out


class ModelSync:
    """Keeps the router's database-managed models equal to the table (see the module docstring)."""

    def __init__(
        self,
        pool: GuardedPool,
        router: Router,
        cipher: ParamCipher,
        *,
        interval_s: float,
        default_timeout: float,
    ) -> None:
        self.pool = pool
        self.router = router
        self.cipher = cipher
        self.interval_s = interval_s
        self.default_timeout = default_timeout
        # The config's deployments by model name: a stored model of the same name joins them.
        self._config: dict[str, list[Deployment]] = {}
        for d in router.deployments:
            self._config.setdefault(d.model_name, []).append(d)
        self._fingerprint: str | None = None
        # Per model name, the (id, updated_at) of the stored rows applied to the router.
        self._applied: dict[str, tuple[tuple[str, datetime], ...]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def config_ids(self) -> frozenset[str]:
        """Ids of the config's deployments (a stored model may not take one)."""
        return frozenset(d.id for ds in self._config.values() for d in ds)

    async def refresh(self) -> bool:
        """Apply the table to the router if it changed since the last look; True when it did."""
        async with self._lock:
            async with self.pool.acquire() as conn:
                digest = await rows_sql.fingerprint(conn)
                if digest == self._fingerprint:
                    return False
                rows = await rows_sql.list_all(conn)
            self._apply(rows)
            self._fingerprint = digest
            return True

    def _apply(self, rows: list[ModelRow]) -> None:
        by_name: dict[str, list[ModelRow]] = {}
        for row in rows:
            by_name.setdefault(row.model_name, []).append(row)
        changed = False
        for name in set(by_name) | set(self._applied):
            stored = by_name.get(name, [])
            version = tuple((r.id, r.updated_at) for r in stored)
            if self._applied.get(name, ()) == version:
                continue
            built = []
            for row in stored:
                try:
                    built.append(
                        build_deployment(row, self.cipher, self.router.providers, self.default_timeout)
                    )
                except UnusableRow as exc:
                    log.error("stored model %r (id %s) is not served: %s", row.model_name, row.id, exc)
            self.router.replace_model(name, self._config.get(name, []) + built)
            if version:
                self._applied[name] = version
            else:
                self._applied.pop(name, None)
            changed = True
        if changed:
            metrics.label_models(self.router.model_names())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="model-sync")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception as exc:
                # The database is away (or a row is malformed): keep serving what was loaded.
                if not self._failing:
                    log.warning("stored models not refreshed: %s; retrying", type(exc).__name__)
                self._failing = True
            else:
                if self._failing:
                    log.info("stored models refreshed again")
                self._failing = False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def start_model_sync(config: Any, plane: Any, router: Router) -> ModelSync:
    """Load the stored models into ``router`` now, then keep them in step in the background.

    ``config`` is the ``GatewayConfig``, ``plane`` the started ``ControlPlane``. A first load that
    fails (the database went away since it was opened) is retried by the poller.
    """
    sync = ModelSync(
        plane.db.pool,
        router,
        ParamCipher(plane.master_key),
        interval_s=config.general_settings.model_refresh_interval_s,
        default_timeout=config.router_settings.timeout or 600.0,
    )
    try:
        await sync.refresh()
    except Exception as exc:
        log.warning("stored models not loaded at start: %s; retrying", type(exc).__name__)
    sync.start()
    return sync
