#!/usr/bin/env bash
# docker-compose.yml on a machine without access to a container registry:
# the same file, with local images made from Debian's packages and a relay
# binary built on this machine.
#
# Usage: scripts/compose-local.sh up [--monitoring] | build | down | ps | logs [ARGS...] | --help
#
#   up      builds the images below (nothing is pulled), then runs
#           `docker compose up -d --no-build` on the unchanged
#           docker-compose.yml with the image variables pointing at them,
#           waits until every service is healthy and HAProxy sees the three
#           nodes up, and prints where players connect and where the stats
#           are. Run it again after a change: it rebuilds the relay image and
#           recreates what changed.
#           --monitoring: also the compose file's `monitoring` profile:
#           Prometheus scraping the three nodes with deploy/prometheus/, at
#           http://127.0.0.1:9090/ (LOBBY_RELAY_PROMETHEUS_PORT). A later
#           `up` without it leaves that Prometheus running; `down` stops it.
#   build   builds the images as `up` does and prints the variables that
#           name them, without touching the stack: for a rolling restart
#           (docs/operations.md), one node at a time, after a change.
#   down    `docker compose --profile monitoring down -v`: every container
#           (Prometheus too), the network and Redis's anonymous volume go;
#           the images stay for the next `up`.
#   ps      `docker compose --profile monitoring ps`
#   logs    `docker compose --profile monitoring logs ARGS...`, e.g.
#           `logs -f relay-1`
#
# Images (built on the first `up`; later ones reuse what is unchanged):
#   lobby-relay-local-base:SUITE   Debian SUITE with redis-server, haproxy,
#                   ca-certificates and curl, made by mmdebstrap from this
#                   machine's apt sources (installed with apt-get if missing,
#                   as root) and `docker import`; about a minute, once;
#   lobby-relay-local-redis:TAG, lobby-relay-local-haproxy:TAG   stand-ins
#                   for redis:7-alpine and haproxy:2.8 (deploy/test-images/);
#   lobby-relay-local-relay:TAG    the Dockerfile's `runtime-prebuilt` target
#                   around `cargo build --release --locked --bin lobby-relay`
#                   (or LOBBY_RELAY_BIN);
#   with --monitoring also
#   lobby-relay-local-monitoring-base:SUITE   Debian SUITE with prometheus
#                   and ca-certificates (mmdebstrap, once, as above);
#   lobby-relay-local-prometheus:TAG   a stand-in for prom/prometheus
#                   (deploy/test-images/prometheus.Dockerfile).
# Remove them all (after `down`) with:
#   docker rmi $(docker images --format '{{.Repository}}:{{.Tag}}' 'lobby-relay-local-*')
#
# Environment (defaults in brackets):
#   LOBBY_RELAY_BIN          a lobby-relay binary to put in the image instead
#                            of building one (linked against a glibc no newer
#                            than SUITE's: Debian 12 has 2.36)
#   LOBBY_RELAY_LOCAL_SUITE  the Debian release of the base image [this
#                            machine's, if it is Debian; else bookworm]
#   LOBBY_RELAY_LOCAL_PREFIX the images' name prefix [lobby-relay-local]
#   LOBBY_RELAY_LOCAL_TAG    the images' tag [latest]
#   COMPOSE                  the compose command ["docker compose" if it
#                            works, else docker-compose]
#   COMPOSE_PROJECT_NAME     as for compose [compose's own default, the
#                            checkout's folder name: the one `docker compose`
#                            run in the checkout uses, so README's recipes
#                            (`docker compose exec -T ...`) reach this stack]
#   COMPOSE_FILE             as for compose [docker-compose.yml, and
#                            docker-compose.override.yml if there is one]
#   LOBBY_RELAY_PORT, LOBBY_RELAY_STATS_PORT, LOBBY_RELAY_NET, LOBBY_RELAY_LOG,
#   LOBBY_RELAY_ADMIN_TOKEN, LOBBY_RELAY_PROMETHEUS_PORT
#                            passed to compose: see docker-compose.yml
#   CARGO_TARGET_DIR         as for cargo
# A docker-compose.override.yml beside docker-compose.yml is read, as by
# `docker compose` itself.
#
# Exit status: 0 success; 1 failure (`up`: the services' state and last log
# lines are shown, and the stack is left as it is for a look: `down` removes
# it); 2 usage error; 3 no Docker engine or no compose.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}

usage() {
  # The comment block above, without its `#`.
  sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}
die() {
  local code=$1
  shift
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit "$code"
}

[ $# -ge 1 ] || die 2 "a command is needed: up [--monitoring] | build | down | ps | logs [ARGS...] (see --help)"
CMD=$1
shift
MONITORING=
case $CMD in
  -h | --help | help)
    usage
    exit 0
    ;;
  up)
    for arg in "$@"; do
      case $arg in
        --monitoring) MONITORING=monitoring ;;
        *) die 2 "up: unknown argument '$arg' (see --help)" ;;
      esac
    done
    ;;
  build | down | ps) [ $# -eq 0 ] || die 2 "$CMD takes no arguments (see --help)" ;;
  logs) ;;
  *) die 2 "unknown command '$CMD' (up, build, down, ps, logs; see --help)" ;;
esac

CL_NAME=compose-local
CL_TMP=$(mktemp -d "${TMPDIR:-/tmp}/lobby-relay-compose-local.XXXXXX")
trap 'rm -rf "$CL_TMP"' EXIT
# shellcheck source=scripts/compose-lib.sh
. "$ROOT/scripts/compose-lib.sh"

cl_have_docker || die 3 "no Docker engine answers (docker info): start one, or check that you may use it"
cl_find_compose || exit 3

PREFIX=${LOBBY_RELAY_LOCAL_PREFIX:-lobby-relay-local}
TAG=${LOBBY_RELAY_LOCAL_TAG:-latest}
CL_SERVICES=(redis relay-1 relay-2 relay-3 haproxy)

# Compose on the checkout's file (and its override, if any). The monitoring
# profile for every command but a plain `up`: `down` removes its container
# too, `ps` and `logs` show it.
if [ -n "${COMPOSE_FILE:-}" ]; then
  COMPOSE_FILES=() # compose reads it
else
  COMPOSE_FILES=(-f "$ROOT/docker-compose.yml")
  if [ -f "$ROOT/docker-compose.override.yml" ]; then
    COMPOSE_FILES+=(-f "$ROOT/docker-compose.override.yml")
  fi
fi
PROFILE=(--profile monitoring)
if [ "$CMD" = up ] && [ "$MONITORING" != monitoring ]; then PROFILE=(); fi
compose() {
  "${COMPOSE_CMD[@]}" ${COMPOSE_FILES[@]+"${COMPOSE_FILES[@]}"} ${PROFILE[@]+"${PROFILE[@]}"} "$@"
}

show_state() {
  say "state of the stack:"
  compose ps 2>&1 | sed 's/^/    /' >&2 || true
  local service
  for service in "${CL_SERVICES[@]}"; do
    say "last log lines of $service:"
    compose logs --no-color --tail=20 "$service" 2>&1 | sed 's/^/    /' >&2 || true
  done
}

case $CMD in
  ps | logs)
    compose "$CMD" "$@"
    exit 0
    ;;
  down)
    say "$(printf '%s ' "${COMPOSE_CMD[@]}" "${PROFILE[@]}")down -v"
    compose down -v --remove-orphans
    exit 0
    ;;
esac

# --- up --------------------------------------------------------------------------
if [ "$MONITORING" = monitoring ]; then CL_SERVICES+=(prometheus); fi
step "relay binary"
cl_relay_binary
step "local images (nothing is pulled)"
cl_build_images "$PREFIX" "$TAG" "$MONITORING"
if [ "$CMD" = build ]; then
  cat <<EOF

Built. To use these images in compose commands that create containers (a
rolling restart, docs/operations.md), first:
  export RELAY_IMAGE=$RELAY_IMAGE REDIS_IMAGE=$REDIS_IMAGE HAPROXY_IMAGE=$HAPROXY_IMAGE
EOF
  exit 0
fi

step "up"
say "REDIS_IMAGE=$REDIS_IMAGE HAPROXY_IMAGE=$HAPROXY_IMAGE RELAY_IMAGE=$RELAY_IMAGE${MONITORING:+ PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE} $(printf '%s ' "${COMPOSE_CMD[@]}" ${PROFILE[@]+"${PROFILE[@]}"})up -d --no-build"
compose up -d --no-build --remove-orphans >"$CL_TMP/up.log" 2>&1 || {
  cat "$CL_TMP/up.log" >&2
  show_state
  fail "up failed (the stack is left as it is; $0 down removes it)"
}
(cl_wait_healthy 90) || {
  show_state
  fail "the stack did not become healthy (it is left as it is; $0 down removes it)"
}
players=$(cl_published haproxy 8765) || fail "HAProxy publishes no port 8765"
stats=$(cl_published haproxy 8404) || fail "HAProxy publishes no port 8404"
monitoring="off (up --monitoring)" services="Redis and HAProxy"
if [ "$MONITORING" = monitoring ]; then
  services="Redis, HAProxy and Prometheus"
  prometheus=$(cl_published prometheus 9090) || fail "Prometheus publishes no port 9090"
  deadline=$((SECONDS + 60))
  until cl_http_get "http://$prometheus/-/ready" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || {
      show_state
      fail "Prometheus at http://$prometheus/ is not ready after 60 s"
    }
    sleep 1
  done
  say "Prometheus ready at http://$prometheus/"
  monitoring="http://$prometheus/          (alerts: http://$prometheus/alerts; targets are scraped every 15 s)"
fi
cat <<EOF

Up: three relay nodes, $services (project $(compose ps -q haproxy | xargs docker inspect -f '{{index .Config.Labels "com.docker.compose.project"}}')).
  players:        ws://$players/          (and the playground: http://$players/)
  HAProxy stats:  http://$stats/          (its own metrics: http://$stats/metrics)
  admin view:     ${LOBBY_RELAY_ADMIN_TOKEN:+http://$players/admin#token=...}${LOBBY_RELAY_ADMIN_TOKEN:-off (set LOBBY_RELAY_ADMIN_TOKEN and run up again)}
  Prometheus:     $monitoring
  state, logs:    $0 ps | logs -f relay-1
  stop:           $0 down
README's compose recipes work in the checkout as they are, e.g.
  ${COMPOSE_CMD[*]} exec -T redis redis-cli --scan --pattern 'lr:lobby:*'
one that creates containers needs the images, e.g.
  RELAY_IMAGE=$RELAY_IMAGE REDIS_IMAGE=$REDIS_IMAGE HAPROXY_IMAGE=$HAPROXY_IMAGE ${COMPOSE_CMD[*]} up -d --no-build relay-1
EOF
