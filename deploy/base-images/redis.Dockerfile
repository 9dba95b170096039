# A stand-in for redis:7 built from Debian's redis-server 7.0 (offline: no registry). Same
# interface docker-compose.yml uses: `redis-server ...` as the command, redis-cli, data in /data.
ARG DEBIAN=switchyard-base/debian:bookworm
FROM ${DEBIAN}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /data && chown redis:redis /data
WORKDIR /data
VOLUME /data
EXPOSE 6379
# The package's postinst picks the uid, so it is named, not numbered.
# hadolint ignore=DL3066
USER redis
# Without a config file Redis binds every address but, with no password, protected mode refuses
# other hosts; the official image turns it off at build time, this appends it to the command
# (`redis-server --appendonly yes` in docker-compose.yml, as for the official image).
ENTRYPOINT ["sh", "-c", "exec \"$@\" --protected-mode no", "redis"]
CMD ["redis-server"]
