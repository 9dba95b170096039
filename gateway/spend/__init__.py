"""Spend: the bundled price table, the batching Postgres ``SpendSink`` and budget resets."""
