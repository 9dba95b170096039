"""Virtual keys: generation and hashing, the Postgres data layer, and the cached ``KeyResolver``."""
