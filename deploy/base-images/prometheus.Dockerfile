# A stand-in for prom/prometheus built from Debian's prometheus 2.42 (offline: no registry). Same
# interface docker-compose.yml uses: the config at /etc/prometheus/prometheus.yml, port 9090.
ARG DEBIAN=switchyard-base/debian:bookworm
FROM ${DEBIAN}
# The JavaScript libraries Debian's web UI depends on are ~200 MB; scraping and the HTTP API
# (what the smoke test reads) need none of them.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* /usr/share/javascript \
 && mkdir /prometheus && chown prometheus:prometheus /prometheus
WORKDIR /prometheus
# The package's postinst picks the uid, so it is named, not numbered.
# hadolint ignore=DL3066
USER prometheus
EXPOSE 9090
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
