# A stand-in for postgres:16 built from Debian's postgresql-15 (offline: no registry). Same
# interface docker-compose.yml uses: POSTGRES_USER/PASSWORD/DB, data in /var/lib/postgresql/data,
# pg_isready on PATH, password auth over TCP.
ARG DEBIAN=switchyard-base/debian:bookworm
FROM ${DEBIAN}
# Debian's package would create a cluster at install time; the entrypoint creates it in the volume.
# hadolint ignore=DL3008
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# SIGINT is Postgres's fast shutdown (the official image's choice): SIGTERM would wait for clients.
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
