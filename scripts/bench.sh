#!/usr/bin/env bash
# The standard benchmark of lobby-relay: builds the release binaries, starts
# a private redis-server and two relay nodes on free loopback ports, runs the
# scenarios of issue 9 with lobby-relay-bench, and writes docs/benchmarks.md
# (with a latency-percentile plot, docs/benchmarks-latency.svg).
#
# Usage: scripts/bench.sh [--help]
#
# Scenarios (every lobby has player A on node 1 and player B on node 2):
#   a  saturation: 200 lobbies, 64-byte messages, 32 in flight per player, 10 s
#   b  game load: 100 lobbies x 2 players x 30 Hz (6,000 msg/s), 20 s, on the
#      relay and on the do-nothing relay (the floor, one node), then a sweep
#      of rates (6k, 10k, 15k, 20k, 30k, 40k msg/s, 8 s each) on both, up to
#      the first rate at which the relay's p99 passes 2 ms
#   c  joins: 2,000 lobbies formed as fast as possible across the two nodes
#   d  memory: 10,000 idle joined connections (5,000 lobbies, one player on
#      each node): each node's RSS before and with them
#   e  the Python relay (bench/python_relay.py, two processes on the same
#      Redis): saturation and game load as in a and b, and 4,000 idle
#      connections; and Redis's own ceiling (redis-benchmark, pipelined PUBLISH)
# Each scenario gets freshly started nodes. A full run takes about 5 minutes
# after the build; nothing is left running (every process started here is
# stopped by its pid, on exit too).
#
# Environment:
#   BENCH_QUICK=1     durations divided by 5 (a check that the script works;
#                     the figures are then noise, and the report says so)
#   BENCH_DIR         state: venv, logs, JSON results [target/bench-state]
#   BENCH_OUT         the report [docs/benchmarks.md]
#   BENCH_RELAY_ARGS  extra options for both relay nodes
#   BENCH_RELAY_BIN   the lobby-relay binary to measure [the one built here];
#                     the load generator is always the one built here
#   BENCH_ONLY        run only these scenarios, e.g. "a b d" (a, b: the game
#                     load on the relay, floor, sweep, c, d, e, f: Redis's
#                     ceiling); the report is then not written, the
#                     headline figures are printed (scripts/bench-ab.sh)
#   CARGO_TARGET_DIR  where cargo builds (as for cargo)
#
# Needs: cargo, python3 (with venv), redis-server, redis-cli and
# redis-benchmark (installed with apt-get when missing, as scripts/test.sh
# does); pip installs websockets and redis[hiredis] into BENCH_DIR/venv.
#
# Exit status: 0 every run passed its correctness checks (no loss, no
# duplicate, no reordering, every lobby formed); 1 the report was written but
# some run failed them (see the report); 2 usage; 3 a tool is missing or the
# build failed; 4 a server did not start.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

case ${1:-} in
  -h | --help)
    sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  "") ;;
  *)
    echo "$PROG: unknown argument $1 (try --help)" >&2
    exit 2
    ;;
esac

# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

QUICK=${BENCH_QUICK:-0}
STATE=${BENCH_DIR:-$ROOT/target/bench-state}
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
RESULTS=$STATE/results
LOGS=$STATE/logs
STARTED_AT=$(date +%s)

# Seconds, divided by 5 in quick mode (at least 1).
secs() {
  if [ "$QUICK" = 1 ]; then
    local s=$(($1 / 5))
    [ "$s" -ge 1 ] || s=1
    echo "${s}s"
  else
    echo "${1}s"
  fi
}

# --- tools -------------------------------------------------------------------

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v redis-cli >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; } || missing+=(redis-tools)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  need_packages "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 || die 3 "cargo is needed (https://rustup.rs)"

mkdir -p "$STATE" "$RESULTS" "$LOGS"
rm -f "$RESULTS"/*.json "$RESULTS"/*.txt

VENV=$STATE/venv
if ! "$VENV/bin/python" -c 'import websockets, redis' >/dev/null 2>&1; then
  say "creating $VENV (websockets, redis[hiredis])"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    need_packages python3-venv
    python3 -m venv "$VENV" || die 3 "cannot create a Python venv"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "websockets>=13" "redis[hiredis]>=5" ||
    die 3 "pip could not install websockets and redis"
fi

build_release
if [ -n "${BENCH_RELAY_BIN:-}" ]; then
  [ -x "$BENCH_RELAY_BIN" ] || die 3 "BENCH_RELAY_BIN is not an executable file: $BENCH_RELAY_BIN"
  RELAY=$BENCH_RELAY_BIN
  say "measuring $RELAY ($("$RELAY" --version))"
fi

# Whether scenario $1 is to run (BENCH_ONLY).
wants() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }
for scenario in ${BENCH_ONLY:-}; do
  case $scenario in
    a | b | floor | sweep | c | d | e | f) ;;
    *) die 2 "BENCH_ONLY: no scenario $scenario (a, b, floor, sweep, c, d, e, f)" ;;
  esac
done

# 10,000 connections in the generator, 5,000 in each node.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 12000 ] ||
  echo "$PROG: warning: only $(ulimit -n) file descriptors; the memory scenario needs 10,000+" >&2

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$STATE" --logfile "$LOGS/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT" "" "$REDIS_PID" || die 4 "redis-server did not start (see $LOGS/redis.log)"
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/

redis_cpu() {
  redis-cli -p "$REDIS_PORT" INFO cpu | tr -d '\r' |
    awk -F: '$1 == "used_cpu_sys" || $1 == "used_cpu_user" { s += $2 } END { printf "%.3f", s }'
}

# The relay's limits are for real players; the generator is one address
# opening thousands of connections and joins, and saturating.
RELAY_OPTS=(--log-format json --max-connections 100000 --max-connections-per-address 100000
  --join-rate 100000000 --join-burst 1000000 --message-rate 10000000 --message-burst 10000000
  --shutdown-timeout 3s)
# shellcheck disable=SC2206
[ -z "${BENCH_RELAY_ARGS:-}" ] || RELAY_OPTS+=($BENCH_RELAY_ARGS)
N1_PORT=$(free_port)
N2_PORT=$(free_port)
FLOOR_PORT=$(free_port)
PY1_PORT=$(free_port)
PY2_PORT=$(free_port)
N1_PID="" N2_PID="" FLOOR_PID="" PY1_PID="" PY2_PID=""

start_nodes() {
  start_relay_pair bench "$LOGS/relay-1-$1.log" "$LOGS/relay-2-$1.log"
  sleep 0.5 # let the freshly started nodes settle (RSS baseline)
}
stop_nodes() {
  stop_pid "$N1_PID"
  stop_pid "$N2_PID"
}
start_floor() {
  "$BENCH" floor --listen "127.0.0.1:$FLOOR_PORT" >"$LOGS/floor-$1.log" 2>&1 &
  FLOOR_PID=$!
  PIDS+=("$FLOOR_PID")
  wait_port "$FLOOR_PORT" "" "$FLOOR_PID" || die 4 "the floor relay did not start"
  sleep 0.2
}
start_python() {
  "$VENV/bin/python" "$ROOT/bench/python_relay.py" --listen "127.0.0.1:$PY1_PORT" \
    --redis-url "$REDIS_URL" --node-id py-1 >"$LOGS/python-1-$1.log" 2>&1 &
  PY1_PID=$!
  PIDS+=("$PY1_PID")
  "$VENV/bin/python" "$ROOT/bench/python_relay.py" --listen "127.0.0.1:$PY2_PORT" \
    --redis-url "$REDIS_URL" --node-id py-2 >"$LOGS/python-2-$1.log" 2>&1 &
  PY2_PID=$!
  PIDS+=("$PY2_PID")
  wait_port "$PY1_PORT" "" "$PY1_PID" || die 4 "python relay 1 did not start (see $LOGS)"
  wait_port "$PY2_PORT" "" "$PY2_PID" || die 4 "python relay 2 did not start (see $LOGS)"
  sleep 0.5
}
stop_python() {
  stop_pid "$PY1_PID"
  stop_pid "$PY2_PID"
}

RELAY_URLS=(--url-a "ws://127.0.0.1:$N1_PORT/" --url-b "ws://127.0.0.1:$N2_PORT/")
FLOOR_URLS=(--url-a "ws://127.0.0.1:$FLOOR_PORT/" --url-b "ws://127.0.0.1:$FLOOR_PORT/")
PY_URLS=(--url-a "ws://127.0.0.1:$PY1_PORT/" --url-b "ws://127.0.0.1:$PY2_PORT/")
relay_pids() { echo "relay-1=$N1_PID,relay-2=$N2_PID,redis=$REDIS_PID"; }
python_pids() { echo "python-1=$PY1_PID,python-2=$PY2_PID,redis=$REDIS_PID"; }

# Runs one measurement: NAME, then lobby-relay-bench options. Writes
# RESULTS/NAME.json (the bench's summary), NAME.txt (its report) and
# NAME.redis.json (Redis's INFO cpu before and after the whole run).
FAILED=()
bench() {
  local name=$1 before after rc=0
  shift
  echo "--- $name"
  before=$(redis_cpu)
  # In the background, so that a signal to this script is handled at once
  # (bash defers its traps while a foreground child runs).
  "$BENCH" --label "$name" --json "$RESULTS/$name.json" "$@" >"$RESULTS/$name.txt" &
  local pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  after=$(redis_cpu)
  cat "$RESULTS/$name.txt"
  printf '{"before": %s, "after": %s}\n' "$before" "$after" >"$RESULTS/$name.redis.json"
  # The Python relay's problems are reported, not held against lobby-relay.
  case $name in python-*) ;; *) [ "$rc" = 0 ] || FAILED+=("$name") ;; esac
}

# p99 of a result, ms (999 when missing).
p99_of() {
  python3 -c 'import json, sys
try:
    print(json.load(open(sys.argv[1]))["latency_ms"]["p99"])
except Exception:
    print(999)' "$RESULTS/$1.json"
}

# --- the machine -------------------------------------------------------------

python3 - "$STATE/machine.json" "$QUICK" <<'EOF'
import json, os, platform, re, subprocess, sys
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""
lscpu = run("lscpu")
model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
mem_kib = 0
with open("/proc/meminfo") as f:
    for line in f:
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
virt = re.search(r"^Hypervisor vendor:\s*(.+)$", lscpu, re.M)
info = {
    "cpu_model": model.group(1) if model else platform.processor(),
    "cores": os.cpu_count(),
    "hypervisor": virt.group(1) if virt else None,
    "memory_gib": round(mem_kib / 1024 / 1024, 1),
    "kernel": platform.release(),
    "os": run("sh", "-c", ". /etc/os-release 2>/dev/null && echo $PRETTY_NAME"),
    "rustc": run("rustc", "--version"),
    "redis": run("redis-server", "--version"),
    "python": sys.version.split()[0],
    "commit": run("git", "rev-parse", "--short", "HEAD"),
    "dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
    "date": run("date", "-u", "+%Y-%m-%d %H:%M UTC"),
    "loadavg_before": open("/proc/loadavg").read().split()[:3],
    "quick": sys.argv[2] == "1",
}
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF

# --- f: Redis's own ceiling --------------------------------------------------

if wants f; then
  say "Redis ceiling: redis-benchmark, pipelined PUBLISH (no subscriber)"
  N_PUB=2000000
  [ "$QUICK" = 1 ] && N_PUB=400000
  redis-benchmark -p "$REDIS_PORT" -n "$N_PUB" -P 32 -q --csv PUBLISH bench:ceiling \
    "$(printf '%064d' 0)" >"$RESULTS/redis-ceiling.csv" 2>/dev/null || true
  cat "$RESULTS/redis-ceiling.csv"
fi

# --- a: saturation -----------------------------------------------------------

if wants a; then
  say "a) saturation, cross-node, 64-byte messages"
  start_nodes saturation
  bench saturation "${RELAY_URLS[@]}" --lobbies 200 --saturate --window 32 --size 64 \
    --warmup "$(secs 2)" --duration "$(secs 10)" --pids "$(relay_pids)"
  stop_nodes
fi

# --- b: game load, floor, sweep ----------------------------------------------

if wants b; then
  say "b) game load, cross-node, 100 lobbies x 2 players x 30 Hz"
  start_nodes game
  bench game "${RELAY_URLS[@]}" --lobbies 100 --rate 30 --size 64 \
    --warmup "$(secs 3)" --duration "$(secs 20)" --pids "$(relay_pids)"
  stop_nodes
fi

if wants floor; then
  start_floor game
  bench floor-game "${FLOOR_URLS[@]}" --lobbies 100 --rate 30 --size 64 \
    --warmup "$(secs 3)" --duration "$(secs 20)" --pids "floor=$FLOOR_PID"
  stop_pid "$FLOOR_PID"
fi

if wants sweep; then
  say "b) rate sweep (relay, then the floor at the same rate), until the relay's p99 passes 2 ms"
  start_nodes sweep
  start_floor sweep
  for total in 6000 10000 15000 20000 30000 40000; do
    rate=$(python3 -c "print($total / 200)")
    bench "sweep-relay-$total" "${RELAY_URLS[@]}" --lobbies 100 --rate "$rate" --size 64 \
      --warmup "$(secs 2)" --duration "$(secs 8)" --pids "$(relay_pids)" --quiet
    bench "sweep-floor-$total" "${FLOOR_URLS[@]}" --lobbies 100 --rate "$rate" --size 64 \
      --warmup "$(secs 2)" --duration "$(secs 8)" --pids "floor=$FLOOR_PID" --quiet
    if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 2.0 else 1)" "$(p99_of "sweep-relay-$total")"; then
      break
    fi
  done
  stop_pid "$FLOOR_PID"
  stop_nodes
fi

# --- c: joins ----------------------------------------------------------------

if wants c; then
  say "c) joins: lobbies formed as fast as possible across the nodes"
  start_nodes joins
  bench joins "${RELAY_URLS[@]}" --lobbies 2000 --idle --duration 1s --pids "$(relay_pids)"
  stop_nodes
fi

# --- d: memory ---------------------------------------------------------------

if wants d; then
  say "d) memory: 10,000 idle joined connections over the two nodes"
  start_nodes memory
  bench memory "${RELAY_URLS[@]}" --lobbies 5000 --idle --duration "$(secs 10)" --pids "$(relay_pids)"
  stop_nodes
fi

# --- e: the Python relay -----------------------------------------------------

if wants e; then
  say "e) the Python relay (asyncio + websockets + redis.asyncio), two processes"
  start_python saturation
  bench python-saturation "${PY_URLS[@]}" --lobbies 200 --saturate --window 32 --size 64 \
    --warmup "$(secs 2)" --duration "$(secs 10)" --pids "$(python_pids)"
  stop_python
  start_python game
  bench python-game "${PY_URLS[@]}" --lobbies 100 --rate 30 --size 64 \
    --warmup "$(secs 3)" --duration "$(secs 20)" --pids "$(python_pids)"
  stop_python
  start_python memory
  bench python-memory "${PY_URLS[@]}" --lobbies 2000 --idle --duration "$(secs 5)" --pids "$(python_pids)"
  stop_python
fi

cleanup

if [ -n "${BENCH_ONLY:-}" ]; then
  python3 "$ROOT/bench/report.py" --results "$RESULTS" --headline
  [ ${#FAILED[@]} -eq 0 ] || { echo "$PROG: runs with problems: ${FAILED[*]}" >&2; exit 1; }
  exit 0
fi

# --- the report --------------------------------------------------------------

ELAPSED=$(($(date +%s) - STARTED_AT))
COMMAND="scripts/bench.sh"
[ "$QUICK" = 1 ] && COMMAND="BENCH_QUICK=1 scripts/bench.sh"
say "writing $OUT"
python3 "$ROOT/bench/report.py" --results "$RESULTS" --machine "$STATE/machine.json" \
  --command "$COMMAND" --elapsed "$ELAPSED" --out "$OUT" \
  --svg "$(dirname "$OUT")/benchmarks-latency.svg"
echo "done in ${ELAPSED} s: $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "$PROG: runs with problems: ${FAILED[*]}" >&2
  exit 1
fi
