"""A write-ahead journal for spend records: what the sink holds in memory is also on disk, so a killed
process loses (almost) nothing.

The request path only appends an encoded line to a list (``append``: about a microsecond, no I/O). A
writer task takes what accumulated, appends it to the active segment file in one ``write`` and sleeps
``interval`` (5 ms) before the next group; so there is at most one write per interval however many
requests arrive, and none when idle. A syncer task fsyncs what was written every ``fsync_interval``
(50 ms) in a worker thread, so the event loop never waits on the disk.

Loss bound. A record is safe from SIGKILL (or any crash of the process) once its ``write`` returned:
it is in the kernel's page cache. It is written at most ``interval`` after it was appended (plus any
event-loop lag, which delays requests as much). So a SIGKILL loses at most the spend of requests that
finished within the last ``interval`` (5 ms) before the kill. A power loss or kernel crash loses at
most what was written since the last fsync returned: ``fsync_interval`` (50 ms) + one fsync.

Files, under ``directory``: ``<name>.lock`` (held with ``flock`` for the life of the process, so a
starting process knows which journals have lost their owner) and segments ``<name>.<n>.jnl``, one
JSON array per line. The sink reports committed records (``release``): they are a prefix of the
appended ones (the sink writes its queue in order), so whole segments are deleted once every record in
them is in Postgres, and the active one is closed and deleted as soon as everything written is
committed. On disk there is never more than the uncommitted records plus one segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from gateway.pipeline import Principal, Usage, UsageEvent

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jnl"
LOCK_SUFFIX = ".lock"


# -- the line format ----------------------------------------------------------------------------------
def encode_record(row_id: str, event: UsageEvent) -> bytes:
    """One journal line: the row id and every field the spend writer stores."""
    p, u = event.principal, event.usage
    return (
        orjson.dumps(
            [
                row_id,
                event.request_id,
                p.key_hash,
                p.team_id,
                p.user_id,
                event.model,
                event.deployment_id,
                event.provider_model,
                u.prompt_tokens,
                u.completion_tokens,
                event.cost,
                event.status,
                event.cache_hit,
                event.stream,
                event.error_code,
                event.started_at,
                event.ended_at,
                event.metadata,
                event.operation,
                event.end_user,
            ],
            default=str,
        )
        + b"\n"
    )


def decode_record(line: bytes) -> tuple[str, UsageEvent]:
    """The inverse of ``encode_record``; raises ``ValueError`` on a torn or foreign line."""
    try:
        fields: list[Any] = orjson.loads(line)
        # Lines written before the customer was recorded have 19 fields, before the operation 18 (chat).
        end_user = fields.pop() if isinstance(fields, list) and len(fields) == 20 else None
        operation = fields.pop() if isinstance(fields, list) and len(fields) == 19 else "chat"
        (
            row_id,
            request_id,
            key_hash,
            team_id,
            user_id,
            model,
            deployment_id,
            provider_model,
            prompt,
            completion,
            cost,
            status,
            cache_hit,
            stream,
            error_code,
            started_at,
            ended_at,
            metadata,
        ) = fields
        # The writer needs only the ids of whom to charge, not the rest of the principal.
        principal = Principal(kind="virtual", key_hash=key_hash, team_id=team_id, user_id=user_id)
        event = UsageEvent(
            request_id=request_id,
            principal=principal,
            model=model,
            deployment_id=deployment_id,
            provider_model=provider_model,
            usage=Usage(int(prompt), int(completion)),
            cost=float(cost),
            status=status,
            cache_hit=bool(cache_hit),
            started_at=float(started_at),
            ended_at=float(ended_at),
            stream=bool(stream),
            error_code=error_code,
            metadata=dict(metadata or {}),
            operation=str(operation),
            end_user=None if end_user is None else str(end_user),
        )
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"not a spend journal record: {exc}") from None
    return str(row_id), event


def _segment_path(directory: Path, name: str, number: int) -> Path:
    return directory / f"{name}.{number:08d}{SEGMENT_SUFFIX}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    # A new file's name must be durable too, or a power loss can drop the whole segment.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the live journal of this process -----------------------------------------------------------------
class SpendJournal:
    """This process's journal (see the module docstring). Everything but the fsyncs runs on the loop."""

    def __init__(
        self,
        directory: Path,
        *,
        interval: float = 0.005,
        fsync_interval: float = 0.05,
        segment_bytes: int = 4 << 20,
    ) -> None:
        self.directory = directory
        self.name = secrets.token_hex(6)
        self._interval = interval
        self._fsync_interval = fsync_interval
        self._segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(
            directory / f"{self.name}{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600
        )
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._pending: list[bytes] = []
        self._appended = 0  # records given to ``append``
        self._written = 0  # records written (or skipped as already committed)
        self._done = 0  # records the sink committed or dropped: always the first ``_done`` appended
        self._numbers = iter(range(1 << 62))
        self._fd: int | None = None  # the active segment
        self._active: Path | None = None
        self._active_bytes = 0
        self._closed: deque[tuple[Path, int]] = deque()  # (segment, index after its last record)
        # What the syncer must fsync next: descriptors of retired segments (it closes them) and
        # whether the active segment or the directory changed since its last pass.
        self._retired: list[int] = []
        self._dirty = False
        self._new_names = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.fsyncs = 0

    # -- the request path ---------------------------------------------------------------------------
    def append(self, row_id: str, event: UsageEvent) -> None:
        self._pending.append(encode_record(row_id, event))
        self._appended += 1
        self._wake.set()

    def release(self, count: int) -> None:
        """The next ``count`` records (in append order) are in Postgres, or given up: their files may go."""
        self._done += count
        self._wake.set()

    @property
    def unwritten(self) -> int:
        return self._appended - self._written

    # -- background ---------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._write_loop(), name="spend-journal-writer"),
                loop.create_task(self._sync_loop(), name="spend-journal-fsync"),
            ]

    async def _write_loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._write_pending()
            except OSError as exc:
                # The records stay in memory and still reach Postgres; only crash safety is degraded.
                log.error("spend journal write failed (%s); records not journaled until it recovers", exc)
                await asyncio.sleep(1.0)
            await asyncio.sleep(self._interval)  # group: what arrives meanwhile goes in one write

    def _write_pending(self) -> None:
        """Write the pending records to the active segment, then retire or delete what is committed.

        A small append to the page cache (microseconds), done inline: a thread hand-off per group
        would cost more than the write. The fsyncs, which can take milliseconds, run in ``_sync_loop``.
        """
        batch, self._pending = self._pending, []
        start, done = self._written, self._done
        # Records already committed to Postgres need no journaling (a fast flush can overtake the writer).
        data = b"".join(batch[max(0, done - start) :])
        end = start + len(batch)
        if data:
            if self._fd is None:
                self._active = _segment_path(self.directory, self.name, next(self._numbers))
                self._fd = os.open(self._active, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                self._active_bytes = 0
                self._new_names = True
            try:
                _write_all(self._fd, data)
            except BaseException:
                self._pending[:0] = batch  # kept in order for the next attempt
                raise
            self._active_bytes += len(data)
            self._dirty = True
        self._written = end
        if (
            self._fd is not None
            and self._active is not None
            and (done >= end or self._active_bytes >= self._segment_bytes)
        ):
            self._retired.append(self._fd)  # the syncer fsyncs and closes it
            self._closed.append((self._active, end))
            self._fd, self._active = None, None
        while self._closed and self._closed[0][1] <= done:
            path, _ = self._closed.popleft()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _sync_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._fsync_interval)
            try:
                await self._sync()
            except OSError as exc:
                log.error("spend journal fsync failed: %s", exc)

    async def _sync(self) -> None:
        """fsync what was written since the last pass, in a thread (the loop never waits on the disk)."""
        if not (self._dirty or self._retired or self._new_names):
            return
        retired, self._retired = self._retired, []
        active = os.dup(self._fd) if self._fd is not None and self._dirty else None
        new_names, self._dirty, self._new_names = self._new_names, False, False
        await asyncio.to_thread(self._fsync_files, retired, active, new_names)

    def _fsync_files(self, retired: list[int], active: int | None, new_names: bool) -> None:
        if new_names:
            _fsync_dir(self.directory)  # a new segment's name must survive a power loss too
        for fd in [*retired, *([active] if active is not None else [])]:
            try:
                os.fsync(fd)
                self.fsyncs += 1
            finally:
                os.close(fd)

    async def close(self) -> None:
        """Stop. All committed: remove the files; otherwise write, fsync and leave them for the next start."""
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        clean = self._done >= self._appended
        if not clean:
            try:
                self._write_pending()  # the records still unwritten, for the next start's replay
            except OSError as exc:
                log.error("spend journal: final write failed (%s)", exc)
        if self._fd is not None and self._active is not None:
            self._retired.append(self._fd)
            self._closed.append((self._active, self._written))
            self._fd, self._active = None, None
        if clean:
            for fd in self._retired:
                os.close(fd)
            self._retired = []
            for path, _ in self._closed:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._closed.clear()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{self.name}{LOCK_SUFFIX}").unlink()
        else:
            try:
                await self._sync()
            except OSError as exc:
                log.error("spend journal: final fsync failed (%s)", exc)
            log.warning(
                "spend journal %s keeps %d uncommitted record(s); the next start writes them",
                self.name,
                self._appended - self._done,
            )
        os.close(self._lock_fd)  # releases the flock: the journal is now an orphan to be replayed


# -- journals of processes that are gone ----------------------------------------------------------------
class OrphanJournal:
    """A journal whose process is gone (its lock is free), held locked while it is replayed."""

    def __init__(self, directory: Path, name: str, lock_fd: int) -> None:
        self.directory = directory
        self.name = name
        self._lock_fd = lock_fd
        self.segments = sorted(directory.glob(f"{name}.*{SEGMENT_SUFFIX}"))
        self.torn_lines = 0

    def records(self) -> Iterator[tuple[str, UsageEvent]]:
        for segment in self.segments:
            with open(segment, "rb") as f:
                for line in f:
                    try:
                        yield decode_record(line)
                    except ValueError:
                        # Only the last line of a segment can be torn (killed mid-write); count, skip.
                        self.torn_lines += 1

    def remove(self) -> None:
        for segment in self.segments:
            with contextlib.suppress(FileNotFoundError):
                segment.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{self.name}{LOCK_SUFFIX}").unlink()
        self.release()

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def orphan_journals(directory: Path) -> list[OrphanJournal]:
    """Journals in ``directory`` whose owner is gone, each locked for the caller (``remove``/``release``)."""
    if not directory.is_dir():
        return []
    names = {
        p.name.split(".", 1)[0] for p in directory.iterdir() if p.suffix in (SEGMENT_SUFFIX, LOCK_SUFFIX)
    }
    found = []
    for name in sorted(names):
        fd = os.open(directory / f"{name}{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live process owns it
            continue
        found.append(OrphanJournal(directory, name, fd))
    return found
