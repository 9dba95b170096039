# A stand-in for nginx:1.27 built from Debian's nginx 1.22 (offline: no registry). Same interface
# docker-compose.yml uses: the config at /etc/nginx/nginx.conf, logs to stdout/stderr.
ARG DEBIAN=switchyard-base/debian:bookworm
FROM ${DEBIAN}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 4000
# SIGQUIT: graceful stop (finish open requests), as the official image.
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
