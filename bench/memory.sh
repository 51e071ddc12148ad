#!/usr/bin/env bash
# The memory scenario of scripts/bench.sh (d) alone, for quick iterations:
# a private Redis, two release relay nodes with the same options as
# scripts/bench.sh, and `lobby-relay-bench --idle` holding LOBBIES lobbies
# (2 x LOBBIES joined connections, half on each node) for SECONDS. Prints
# the relay's RSS per idle joined connection, as in docs/benchmarks.md:
# (sum of both nodes' RSS with the connections - before them) / connections.
#
#   bench/memory.sh [LOBBIES [SECONDS]]      defaults: 5000 (10,000 connections), 10
#
# Environment: CARGO_TARGET_DIR (as for cargo); MEMORY_RELAY_ARGS, extra
# options for both nodes. Builds the release binaries first. Leaves the
# bench's JSON summary and the logs in $CARGO_TARGET_DIR/bench-memory/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOBBIES=${1:-5000}
SECONDS_HELD=${2:-10}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
STATE=$TARGET/bench-memory
mkdir -p "$STATE"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
command -v redis-server >/dev/null || { echo "memory.sh: redis-server is needed" >&2; exit 3; }

(cd "$ROOT" && cargo build --release --locked --bins --quiet)
RELAY=$TARGET/release/lobby-relay
BENCH=$TARGET/release/lobby-relay-bench

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

REDIS_PORT=$(free_port)
N1_PORT=$(free_port)
N2_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$STATE" --logfile "$STATE/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 100); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
OPTS=(--log-format json --max-connections 100000 --max-connections-per-address 100000
  --join-rate 100000000 --join-burst 1000000 --message-rate 10000000 --message-burst 10000000
  --shutdown-timeout 3s)
# shellcheck disable=SC2206
[ -z "${MEMORY_RELAY_ARGS:-}" ] || OPTS+=($MEMORY_RELAY_ARGS)
"$RELAY" serve --listen "127.0.0.1:$N1_PORT" --node-id bench-1 \
  --redis-url "redis://127.0.0.1:$REDIS_PORT/" "${OPTS[@]}" >"$STATE/relay-1.log" 2>&1 &
N1_PID=$!
PIDS+=("$N1_PID")
"$RELAY" serve --listen "127.0.0.1:$N2_PORT" --node-id bench-2 \
  --redis-url "redis://127.0.0.1:$REDIS_PORT/" "${OPTS[@]}" >"$STATE/relay-2.log" 2>&1 &
N2_PID=$!
PIDS+=("$N2_PID")
for port in "$N1_PORT" "$N2_PORT"; do
  for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$port/readyz" && break
    sleep 0.1
  done
done
sleep 0.5 # let the freshly started nodes settle (RSS baseline), as scripts/bench.sh does

"$BENCH" --label memory --json "$STATE/memory.json" \
  --url-a "ws://127.0.0.1:$N1_PORT/" --url-b "ws://127.0.0.1:$N2_PORT/" \
  --lobbies "$LOBBIES" --idle --duration "${SECONDS_HELD}s" \
  --pids "relay-1=$N1_PID,relay-2=$N2_PID,redis=$REDIS_PID" --quiet >"$STATE/memory.txt" 2>&1 || {
  cat "$STATE/memory.txt" >&2
  exit 1
}
python3 - "$STATE/memory.json" <<'EOF'
import json, sys
run = json.load(open(sys.argv[1]))
nodes = [p for p in run["processes"] if p["name"].startswith("relay")]
n = run["connections"]
before = " + ".join(str(p["rss_before_kib"]) for p in nodes)
after = " + ".join(str(p["rss_end_kib"]) for p in nodes)
per = sum(p["rss_delta_kib"] for p in nodes) / max(n, 1)
print(f"{n} connections; relay RSS before {before} KiB, with them {after} KiB: {per:.2f} KiB per connection")
EOF
