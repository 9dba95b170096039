#!/usr/bin/env bash
# Compose smoke test, offline: build a Debian base locally (no registry), build the images on it,
# bring the stack up, and check: a chat through nginx reaches two replicas, a key created on one
# replica works on the other, and `down` + `up` keeps keys and spend (named volumes).
# Needs: a running dockerd with the compose plugin, debootstrap, and base images for postgres,
# redis and nginx present locally (POSTGRES_IMAGE / REDIS_IMAGE / NGINX_IMAGE override them).
set -euo pipefail
cd "$(dirname "$0")/.."
export SWITCHYARD_MASTER_KEY=${SWITCHYARD_MASTER_KEY:-sk-smoke-master}
export BASE=${BASE:-switchyard-base:bookworm}
MK="Authorization: Bearer $SWITCHYARD_MASTER_KEY"
URL=http://127.0.0.1:${GATEWAY_PORT:-4000}
t0=$(date +%s)
step() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  step "debootstrap a minimal Debian with python3 as $BASE"
  root=$(mktemp -d)
  sudo debootstrap --variant=minbase --include=python3,python3-pip,python3-venv bookworm "$root"
  # python:3.x-slim has `python`/`pip` on PATH and allows pip installs; mirror that.
  sudo chroot "$root" sh -c 'ln -sf /usr/bin/python3 /usr/local/bin/python && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED'
  sudo tar -C "$root" -c . | docker import - "$BASE"
  sudo rm -rf "$root"
fi

step "build images on $BASE"
docker compose build gateway
cleanup() { docker compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

wait_ready() {
  for _ in $(seq 120); do
    curl -fsS "$URL/health/readiness" >/dev/null 2>&1 && return 0; sleep 1
  done
  docker compose logs --tail 50; return 1
}
chat() {  # $1: bearer token; prints the response body
  curl -fsS "$URL/v1/chat/completions" -H "Authorization: Bearer $1" -H 'content-type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
}

step "compose up"
docker compose up -d --wait
wait_ready

step "chat through nginx reaches two replicas"
for _ in 1 2 3 4; do chat "$SWITCHYARD_MASTER_KEY" >/dev/null; done
served=0
for c in $(docker compose ps -q gateway); do
  # Each replica's own /metrics (not through nginx) counts the requests it served.
  if docker exec "$c" python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:4000/metrics').read().decode())" \
      | grep -E '^switchyard_requests_total\{' | grep -qv ' 0\.0$'; then served=$((served + 1)); fi
done
echo "replicas that served a chat: $served"; [ "$served" -ge 2 ]

step "key created on replica 1, used on replica 2"
ids=($(docker compose ps -q gateway))
key=$(docker exec "${ids[0]}" python -c "
import json,urllib.request
r=urllib.request.Request('http://127.0.0.1:4000/key/generate',data=b'{}',method='POST',
  headers={'Authorization':'Bearer $SWITCHYARD_MASTER_KEY','content-type':'application/json'})
print(json.load(urllib.request.urlopen(r))['key'])")
docker exec "${ids[1]}" python -c "
import urllib.request
r=urllib.request.Request('http://127.0.0.1:4000/v1/chat/completions',method='POST',
  data=b'{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}',
  headers={'Authorization':'Bearer $key','content-type':'application/json'})
assert urllib.request.urlopen(r).status == 200"

step "down + up: nothing lost"
sleep 3  # the spend sink flushes on SIGTERM anyway; this only keeps the log readable
before=$(curl -fsS "$URL/key/info?key=$key" -H "$MK")
docker compose down
docker compose up -d --wait
wait_ready
chat "$key" >/dev/null
after=$(curl -fsS "$URL/key/info?key=$key" -H "$MK")
echo "before: $before"; echo "after:  $after"
step "OK"
