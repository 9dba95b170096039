"""HTTP routes of the gateway (the OpenAI-compatible API, health, metrics)."""
