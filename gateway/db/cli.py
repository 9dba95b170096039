"""``switchyard migrate``: apply pending migrations and exit (or write/check one with Prisma's engine).

    switchyard migrate [--config FILE]            apply pending migrations to DATABASE_URL (or the
                                                  embedded server under general_settings.data_dir)
    switchyard migrate new NAME                   write migrations/<timestamp>_NAME from schema.prisma
    switchyard migrate check                      fail (and print the SQL) if schema and migrations differ

``new`` and ``check`` run ``tools/prisma/migrate.mjs`` (Node; ``npm ci`` there first) against a real
server, because Prisma's schema engine diffs through a throwaway shadow database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATE_SCRIPT = REPO_ROOT / "tools" / "prisma" / "migrate.mjs"


async def _apply(config_path: str | None) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.db.database import open_database
    from gateway.db.migrations import MigrationError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"switchyard migrate: bad config:\n{exc}", file=sys.stderr)
        return 2
    try:
        db = await open_database(config.general_settings.database_url, config.data_dir, migrate=False)
    except Exception as exc:
        print(f"switchyard migrate: cannot reach the database: {exc}", file=sys.stderr)
        return 1
    try:
        from gateway.db.migrations import apply_migrations

        async with db.pool.acquire() as conn:
            applied = await apply_migrations(conn)
    except MigrationError as exc:
        print(f"switchyard migrate: {exc}", file=sys.stderr)
        return 1
    finally:
        await db.close()
    print(f"applied: {', '.join(applied)}" if applied else "no pending migrations")
    return 0


def _node(args: list[str], database_url: str | None) -> int:
    node = shutil.which("node")
    if node is None:
        print("switchyard migrate: node is required for this command", file=sys.stderr)
        return 2
    if not (MIGRATE_SCRIPT.parent / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=MIGRATE_SCRIPT.parent, check=True)
    env = dict(os.environ)
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run([node, str(MIGRATE_SCRIPT), *args], env=env, check=False).returncode


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="switchyard migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.environ.get("SWITCHYARD_CONFIG"))
    parser.add_argument("action", nargs="?", choices=["apply", "new", "check"], default="apply")
    parser.add_argument("name", nargs="?", help="the new migration's name (for `new`)")
    args = parser.parse_args(argv)
    if args.action == "apply":
        return asyncio.run(_apply(args.config))
    url = os.environ.get("DATABASE_URL")
    if args.action == "check":
        return _node(["check"], url)
    if not args.name:
        parser.error("`new` needs a NAME")
    return _node(["dev", "--name", args.name], url)
