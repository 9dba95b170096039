# A stand-in for python:3.11-slim built from Debian packages only (offline: no registry).
# Same interface the gateway Dockerfile relies on: `python` and `pip` on PATH, pip installs allowed.
ARG DEBIAN=switchyard-base/debian:bookworm
FROM ${DEBIAN}
# python:3.x-slim lets pip install into the system interpreter; Debian marks it externally managed.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
CMD ["python3"]
