"""Postgres for the control plane: connection pool, Prisma-compatible migrations, embedded server."""

from gateway.db.database import Database, open_database
from gateway.db.migrations import MigrationError, apply_migrations

__all__ = ["Database", "MigrationError", "apply_migrations", "open_database"]
