#!/usr/bin/env bash
# Builds every base image docker-compose.yml needs from Debian packages alone, for machines that
# reach Debian's mirror but no image registry: debootstrap a minimal Debian, `docker import` it,
# then build python, postgres, redis, nginx and prometheus stand-ins on it (deploy/base-images/).
# Images already present are kept. Build logs go to stderr; stdout is the environment that points
# docker-compose.yml at these images, so callers do:  eval "$(deploy/base-images.sh)"
# Needs: root (debootstrap, chroot), a running dockerd, the `debootstrap` package.
#   DEBIAN_RELEASE (bookworm), DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR: where the packages come from
#   EXTRA_CA_DIR (/usr/local/share/ca-certificates): the host's extra CA certificates (*.crt)
#   BASE_IMAGES ("python postgres redis nginx prometheus"): which stand-ins to build
set -euo pipefail
cd "$(dirname "$0")/base-images"
release=${DEBIAN_RELEASE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
extra_ca=${EXTRA_CA_DIR:-/usr/local/share/ca-certificates}
debian=switchyard-base/debian:$release
# One tag per stand-in, named after the Debian package version it carries (bookworm's).
declare -A tags=(
  [python]=switchyard-base/python:3.11 [postgres]=switchyard-base/postgres:15
  [redis]=switchyard-base/redis:7.0 [nginx]=switchyard-base/nginx:1.22
  [prometheus]=switchyard-base/prometheus:2.42
)
declare -A env_names=(
  [python]=BASE [postgres]=POSTGRES_IMAGE [redis]=REDIS_IMAGE [nginx]=NGINX_IMAGE
  [prometheus]=PROMETHEUS_IMAGE
)
# The legacy builder: BuildKit would fetch the Dockerfile's `# syntax` frontend from a registry.
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
log() { echo "base-images: $*" >&2; }
present() { docker image inspect "$1" >/dev/null 2>&1; }

if ! present "$debian"; then
  log "debootstrap $release (minbase) from $mirror"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase "$release" "$root" "$mirror" >&2
  cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror $release main
deb $mirror $release-updates main
deb $security $release-security main
EOF
  # Like the slim images: no docs, man pages or translations in anything installed later.
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  # Like the official Debian image: apt keeps no package cache, so each RUN layer stays lean.
  cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
  # The host's own extra CAs (a TLS-inspecting egress proxy's, say): pip in the images trusts what
  # the host trusts. Debian's ca-certificates package adds them when an image installs it.
  mkdir -p "$root/usr/local/share/ca-certificates"
  find "$extra_ca" -maxdepth 1 -name '*.crt' -exec cp -t "$root/usr/local/share/ca-certificates" {} +
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$debian" >&2
fi

for name in ${BASE_IMAGES:-python postgres redis nginx prometheus}; do
  tag=${tags[$name]:?unknown base image $name}
  if ! present "$tag"; then
    log "build $tag"
    docker build -q -t "$tag" --build-arg "DEBIAN=$debian" -f "$name.Dockerfile" . >&2
  fi
  echo "export ${env_names[$name]}=$tag"
done
