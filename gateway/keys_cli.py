"""``switchyard keys create``: a virtual key without curl.

It asks a running gateway's admin API (``POST /key/generate``) with the master key rather than
writing to the database itself: the gateway owns the key format, hashing, the defaults and the
checks (team exists, models allowed), so a key made here is exactly one made over HTTP, and the
command needs no database credentials. The master key comes from ``SWITCHYARD_MASTER_KEY`` (or
``--master-key``) and is never printed. The reply (the secret ``key`` once, its hash ``token``,
the stored fields) is printed as JSON on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], default_url: str) -> None:
    keys = sub.add_parser("keys", help="virtual keys: keys create [--alias A] [--team T] ...")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="create", required=True)
    create = keys_sub.add_parser("create", help="create a virtual key through a running gateway")
    create.add_argument("--url", default=os.environ.get("SWITCHYARD_URL", default_url), help="the gateway")
    create.add_argument(
        "--master-key",
        default=os.environ.get("SWITCHYARD_MASTER_KEY"),
        help="the gateway's master key (default: $SWITCHYARD_MASTER_KEY)",
    )
    create.add_argument("--alias", dest="key_alias", help="a unique name for the key")
    create.add_argument("--team", dest="team_id", help="the team the key belongs to")
    create.add_argument("--user", dest="user_id", help="the user the key belongs to")
    create.add_argument("--models", help="comma-separated model names the key may use (default: all)")
    create.add_argument("--max-budget", type=float, help="USD the key may spend")
    create.add_argument("--rpm", dest="rpm_limit", type=int, help="requests per minute")
    create.add_argument("--tpm", dest="tpm_limit", type=int, help="tokens per minute")
    create.add_argument("--duration", help="how long the key lives, e.g. 30d (default: forever)")
    create.set_defaults(func=create_key)


def _body(args: argparse.Namespace) -> dict[str, Any]:
    fields = ("key_alias", "team_id", "user_id", "max_budget", "rpm_limit", "tpm_limit", "duration")
    body: dict[str, Any] = {name: getattr(args, name) for name in fields if getattr(args, name) is not None}
    if args.models:
        body["models"] = [name.strip() for name in args.models.split(",") if name.strip()]
    return body


def create_key(args: argparse.Namespace) -> int:
    # Imported here: building the parser must not slow every other command.
    import httpx
    import orjson

    if not args.master_key:
        print(
            "switchyard: set SWITCHYARD_MASTER_KEY (or --master-key) to the gateway's master key",
            file=sys.stderr,
        )
        return 2
    url = args.url.rstrip("/") + "/key/generate"
    try:
        reply = httpx.post(
            url, json=_body(args), headers={"Authorization": f"Bearer {args.master_key}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        print(f"switchyard: cannot reach the gateway at {args.url}: {exc}", file=sys.stderr)
        return 1
    if reply.status_code != 200:
        print(f"switchyard: the gateway refused ({reply.status_code}): {reply.text}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(orjson.dumps(reply.json(), option=orjson.OPT_INDENT_2) + b"\n")
    return 0
