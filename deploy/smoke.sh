#!/usr/bin/env bash
# Compose smoke test: bring docker-compose.yml up and check, through nginx on one port, that
#   1. chats (plain and streamed) reach every gateway replica,
#   2. a key created on one replica works on another (shared Postgres and Redis),
#   3. Prometheus scrapes every replica (SMOKE_PROMETHEUS=0 skips it),
#   4. a replica killed with SIGKILL right after answering loses no spend: on restart it replays
#      its spend journal (the shared `gatewaystate` volume) into Postgres,
#   5. `down` + `up` keeps keys and spend (named volumes): the key still works, its spend rows
#      from before are still there and the new one is added.
# Exits non-zero at the first failed check and prints each step's time.
# Base images: by default built from Debian packages (deploy/base-images.sh: no registry needed);
# SWITCHYARD_BASES=public uses compose's defaults (python:3.11-slim, postgres:16, ...) instead.
# Needs: a running dockerd, `docker compose` (v2) or `docker-compose` (v1.29, Debian's package),
# curl and python3 on the host; root for deploy/base-images.sh's debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
export SWITCHYARD_MASTER_KEY=${SWITCHYARD_MASTER_KEY:-sk-smoke-master}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-switchyard-smoke}
replicas=${GATEWAY_REPLICAS:-2}
[ "${SMOKE_PROMETHEUS:-1}" = 1 ] && export COMPOSE_PROFILES=metrics
URL=http://127.0.0.1:${GATEWAY_PORT:-4000}
PROM=http://127.0.0.1:${PROMETHEUS_PORT:-9090}
MK="Authorization: Bearer $SWITCHYARD_MASTER_KEY"
t0=$(date +%s)
step() { echo "[$(($(date +%s) - t0))s] $*"; }
fail() { echo "FAIL: $*" >&2; compose ps >&2 || true; compose logs --tail 30 >&2 || true; exit 1; }
setup="apt-get install docker.io docker-compose debootstrap; dockerd >/var/log/dockerd.log 2>&1 &"
docker info >/dev/null 2>&1 || { echo "no Docker daemon answers; on Debian, as root: $setup" >&2; exit 2; }
if docker compose version >/dev/null 2>&1; then
  compose() { docker compose "$@"; }
elif command -v docker-compose >/dev/null; then
  compose() { docker-compose "$@"; }
else
  echo "neither \`docker compose\` nor docker-compose; on Debian, as root: $setup" >&2; exit 2
fi
# The legacy builder: BuildKit would fetch the Dockerfile's `# syntax` frontend from a registry.
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}

if [ "${SWITCHYARD_BASES:-local}" = local ]; then
  step "base images from Debian packages"
  eval "$(deploy/base-images.sh)"
  echo "BASE=$BASE POSTGRES_IMAGE=$POSTGRES_IMAGE REDIS_IMAGE=$REDIS_IMAGE NGINX_IMAGE=$NGINX_IMAGE"
fi

step "build the gateway image"
compose build gateway
cleanup() { [ "${SMOKE_KEEP:-0}" = 1 ] || compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

up() {  # start the stack and wait until every replica is healthy and nginx answers
  compose up -d --scale "gateway=$replicas"
  local healthy=0
  for _ in $(seq 180); do
    healthy=0
    for c in $(compose ps -q gateway); do
      [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ] && healthy=$((healthy + 1))
    done
    if [ "$healthy" -ge "$replicas" ] && curl -fsS "$URL/health/readiness" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  fail "$healthy of $replicas replicas healthy after 180 s"
}
json() {  # $1: a Python expression over `d`, the JSON document on stdin
  python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"
}
chat() {  # $1: bearer token; prints the reply's text
  curl -fsS "$URL/v1/chat/completions" -H "Authorization: Bearer $1" -H 'content-type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' \
    | json "d['choices'][0]['message']['content']"
}
in_replica() {  # $1: container, $2: path, $3: bearer token, $4: JSON body (GET without it)
  docker exec "$1" python -c "
import sys, urllib.request
body = sys.argv[3].encode() or None
r = urllib.request.Request('http://127.0.0.1:4000' + sys.argv[1], data=body,
    headers={'Authorization': 'Bearer ' + sys.argv[2], 'content-type': 'application/json'})
print(urllib.request.urlopen(r).read().decode())" "$2" "$3" "${4:-}"
}
spend_rows() {  # $1: key; the number of spend rows recorded for it
  curl -fsS "$URL/spend/logs?api_key=$1" -H "$MK" | json "len(d)"
}
wait_rows() {  # $1: key, $2: rows expected (the spend queue writes in the background)
  for _ in $(seq 30); do [ "$(spend_rows "$1")" = "$2" ] && return 0; sleep 1; done
  fail "key has $(spend_rows "$1") spend rows, expected $2"
}

step "compose up ($replicas gateway replicas)"
up
step "stack healthy"
if compose logs gateway | grep -i 'journal disabled'; then fail "a replica cannot write its spend journal"; fi

step "chats through nginx reach every replica"
for _ in $(seq 20); do chat "$SWITCHYARD_MASTER_KEY" >/dev/null; done
chunks=$(curl -fsSN "$URL/v1/chat/completions" -H "$MK" -H 'content-type: application/json' \
  -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}' | grep -c '^data: ')
[ "$chunks" -ge 2 ] || fail "stream through nginx gave $chunks events"
mapfile -t ids < <(compose ps -q gateway)
served=0
for c in "${ids[@]}"; do
  # Each replica's own /metrics (not through nginx) counts the chats it served.
  n=$(in_replica "$c" /metrics "$SWITCHYARD_MASTER_KEY" \
    | awk '/^switchyard_requests_total\{/ && /chat/ {s += $NF} END {print s + 0}')
  echo "  replica ${c:0:12} served $n"
  [ "${n%.*}" -gt 0 ] && served=$((served + 1))
done
[ "$served" -ge "$replicas" ] || fail "only $served of $replicas replicas served a chat"

step "key created on replica 1 works on replica 2"
key=$(in_replica "${ids[0]}" /key/generate "$SWITCHYARD_MASTER_KEY" '{"key_alias":"smoke"}' | json "d['key']")
in_replica "${ids[1]}" /v1/chat/completions "$key" \
  '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' | json "d['choices'][0]['message']['content']"
wait_rows "$key" 1

if [ "${SMOKE_PROMETHEUS:-1}" = 1 ]; then
  step "prometheus scrapes every replica"
  up_targets=0
  for _ in $(seq 60); do
    up_targets=$(curl -fsS "$PROM/api/v1/targets" \
      | json "sum(t['health'] == 'up' for t in d['data']['activeTargets'])" 2>/dev/null || echo 0)
    [ "$up_targets" -ge "$replicas" ] && break
    sleep 1
  done
  [ "$up_targets" -ge "$replicas" ] || fail "prometheus has $up_targets replicas up, expected $replicas"
fi

step "a replica killed (SIGKILL) right after 20 chats loses no spend"
key2=$(in_replica "${ids[0]}" /key/generate "$SWITCHYARD_MASTER_KEY" '{"key_alias":"smoke-kill"}' | json "d['key']")
docker exec "${ids[0]}" python -c "
import sys, urllib.request
for _ in range(20):
    r = urllib.request.Request('http://127.0.0.1:4000/v1/chat/completions', method='POST',
        data=b'{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}',
        headers={'Authorization': 'Bearer ' + sys.argv[1], 'content-type': 'application/json'})
    urllib.request.urlopen(r).read()" "$key2"
docker kill -s KILL "${ids[0]}" >/dev/null
# Through nginx the other replica answers; what the killed one had not flushed is in its journal.
echo "  spend rows in Postgres with the replica dead: $(spend_rows "$key2" || echo '?') of 20"
docker start "${ids[0]}" >/dev/null
wait_rows "$key2" 20
echo "  after its restart (journal replayed): 20 of 20"

step "down + up: nothing lost"
before=$(curl -fsS "$URL/key/info?key=$key" -H "$MK" | json "d['info']['spend']")
compose down
step "down done (replicas drained on SIGTERM); up again"
up
chat "$key" >/dev/null
wait_rows "$key" 2
after=$(curl -fsS "$URL/key/info?key=$key" -H "$MK" | json "d['info']['spend']")
echo "  key spend before down: $before, after up and one more chat: $after"
python3 -c "import sys; b, a = map(float, sys.argv[1:]); sys.exit(not (b > 0 and a > b))" "$before" "$after" \
  || fail "spend did not survive: before $before, after $after"
step "OK"
