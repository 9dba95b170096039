"""Routing: pick a deployment for each request, retry, fall back and cool down failing ones.

Several ``model_list`` entries may share one ``model_name``; each is a deployment with optional
``weight``, ``rpm``, ``tpm``, ``timeout``, ``stream_timeout``, ``max_parallel_requests`` and
``order`` (lower order is tried first; higher tiers only when every lower one is unavailable).

``router_settings`` (LiteLLM's names):

- ``routing_strategy``: ``simple-shuffle`` (weighted, default), ``least-busy`` (fewest in
  flight), ``latency-based-routing`` (EWMA latency, time to first token for streams; untried
  deployments first), ``usage-based-routing`` (most rpm/tpm headroom this minute),
  ``cost-based-routing`` (cheapest ``input_cost_per_token + output_cost_per_token``).
  Deployments cooling down or at their own rpm/tpm/parallel limits are skipped by all of them.
- ``num_retries`` / ``retry_budget_s`` (else ``timeout``): retries of 429/5xx/timeouts/connection
  errors with exponential backoff and jitter, ``Retry-After`` honoured when no other deployment
  can take the retry; a retry prefers a deployment this request has not tried. Never on
  400/401/403/404.
- ``fallbacks``, ``context_window_fallbacks``, ``content_policy_fallbacks``: other model names,
  tried in order (each with its own retries) when a model is exhausted / the prompt is too long
  / the upstream refuses the content.
- ``allowed_fails`` within ``allowed_fails_window_s`` -> out for ``cooldown_time`` seconds (a 429
  with ``Retry-After`` -> out for that long). Shared through Redis when
  ``general_settings.redis_url`` is set. A model whose deployments are all cooling down answers
  503 at once with ``Retry-After``. A model's only deployment is cooled down only when
  ``allowed_fails`` is set explicitly, or after 1000 failures in a row (see ``cooldowns``).
- ``first_chunk_timeout``: streams must produce their first event within it (per deployment:
  ``stream_timeout``). Streams are retried only before their first event.

Modules: ``state`` (per-deployment counters), ``strategies``, ``model_group`` (tiers + the pick),
``cooldowns``, ``retry_policy``, ``fallbacks``, ``router`` (the request path), ``health_probe``
(``GET /health``), ``deployment`` (config entry -> ``Deployment``).
"""
