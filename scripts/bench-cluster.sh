#!/usr/bin/env bash
# lobby-relay on a Redis Cluster (issue 10, "Even spread"): builds the release
# binaries, and for each shard count S forms a private Redis Cluster of S
# masters on free loopback ports (no replicas, no persistence), starts two
# relay nodes on it (redis+cluster://) and runs the load generator's
# cross-node scenarios; as a baseline, the same on one plain redis-server.
# Writes the section "Redis Cluster" of docs/benchmarks.md (between its
# begin/end comments, in place; the rest of the file is left as
# scripts/bench.sh wrote it).
#
# Usage: scripts/bench-cluster.sh [--help]
#
# Runs (every lobby has player A on node 1 and player B on node 2, so every
# message crosses Redis; fresh relay nodes for each run):
#   saturation  200 lobbies, 64-byte messages, 32 in flight per player,
#               2 s warm-up, 10 s measured (scenario a of scripts/bench.sh)
#   game        100 lobbies x 2 players x 30 Hz (6,000 msg/s), 3 s warm-up,
#               20 s measured (scenario b)
# on: one plain Redis (redis://, the baseline), then clusters of 1, 2, 3 and
# 4 shards. Collected per run: the generator's JSON (delivered msg/s, loss,
# duplicates, reordering, latency), CPU seconds of each relay node and each
# shard over the measured interval (/proc/PID/stat, through the generator's
# --pids), each shard's INFO commandstats before and after the run
# (EVALSHA, SPUBLISH/PUBLISH calls and usec) and its count of lr:lobby:*
# keys in the middle of the run; and what the whole machine did meanwhile
# (other work on a shared machine is measured, waited out before each run,
# and a run it disturbed is run again; see BENCH_QUIET_WAIT, BENCH_RETRIES).
# A full run takes about 5 minutes after the build on a quiet machine (at
# most about 15 on a busy one); nothing is left running (every process
# started here is stopped by its pid, on exit too).
#
# Environment:
#   BENCH_QUICK=1     durations divided by 5 (a check that the script works;
#                     the figures are then noise, and the report says so)
#   BENCH_SHARDS      shard counts to run ["1 2 3 4"]
#   BENCH_QUIET_WAIT  before each run, the longest wait for the machine to be
#                     under 15% busy (other people's builds and tests) [20]
#   BENCH_RETRIES     times a run that shared the machine with a quarter of a
#                     core or more of other work is run again [1]
#   BENCH_DIR         state: logs, cluster configs, results
#                     [target/bench-cluster-state]
#   BENCH_OUT         the report it rewrites its section of
#                     [docs/benchmarks.md]
#   BENCH_RELAY_ARGS  extra options for both relay nodes
#   CARGO_TARGET_DIR  where cargo builds (as for cargo)
#
# Needs: cargo, python3, curl, redis-server and redis-cli 7.0 or later
# (sharded pub/sub, CLUSTER ADDSLOTSRANGE; installed with apt-get when
# missing, as scripts/test.sh does).
#
# Exit status: 0 every run passed its correctness checks (no loss, no
# duplicate, no reordering, every lobby formed); 1 the report was written but
# some run failed them (see the report); 2 usage; 3 a tool is missing or the
# build failed; 4 a server or the cluster did not start.
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
SHARD_COUNTS=${BENCH_SHARDS:-1 2 3 4}
QUIET_WAIT=${BENCH_QUIET_WAIT:-20}
RETRIES=${BENCH_RETRIES:-1}
STATE=${BENCH_DIR:-$ROOT/target/bench-cluster-state}
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
RESULTS=$STATE/results
LOGS=$STATE/logs
case $QUIET_WAIT$RETRIES in *[!0-9]*) die 2 "BENCH_QUIET_WAIT and BENCH_RETRIES are whole numbers" ;; esac
for s in $SHARD_COUNTS; do
  case $s in [1-9] | 1[0-6]) ;; *) die 2 "BENCH_SHARDS: $s is not a shard count from 1 to 16" ;; esac
done

# Seconds, divided by 5 in quick mode (at least 1).
secs() {
  if [ "$QUICK" = 1 ]; then
    local s=$(($1 / 5))
    [ "$s" -ge 1 ] || s=1
    echo "$s"
  else
    echo "$1"
  fi
}

# --- tools -------------------------------------------------------------------

need_bench_tools
REDIS_MAJOR=$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
[ "${REDIS_MAJOR:-0}" -ge 7 ] ||
  die 3 "redis-server 7.0 or later is needed (sharded pub/sub); found: $(redis-server --version)"

mkdir -p "$STATE" "$RESULTS" "$LOGS"
rm -f "$RESULTS"/* "$LOGS"/* "$STATE"/nodes-*.conf

build_release
STARTED_AT=$(date +%s)

# The Redis of the current configuration: one plain redis-server or the
# masters of a cluster ("shards"), and the URL the nodes are given.
SHARD_PORTS=()
SHARD_PIDS=()
REDIS_URL=""

rcli() {
  local port=$1
  shift
  timeout 10 redis-cli -p "$port" "$@" | tr -d '\r'
}

start_redis_server() {
  local name=$1 port=$2
  shift 2
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$STATE" --logfile "$LOGS/$name.log" "$@" &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$port" "" "$pid" || die 4 "redis-server $name did not start (see $LOGS/$name.log)"
  SHARD_PORTS+=("$port")
  SHARD_PIDS+=("$pid")
}

start_plain() {
  SHARD_PORTS=()
  SHARD_PIDS=()
  start_redis_server plain "$(free_port)"
  REDIS_URL=redis://127.0.0.1:${SHARD_PORTS[0]}/
}

# S masters, no replicas: CLUSTER MEET, then slots 0-16383 split evenly with
# CLUSTER ADDSLOTSRANGE (redis-cli --cluster create wants 3 masters or more).
start_cluster() {
  local shards=$1 i port bus buses=() seeds=()
  SHARD_PORTS=()
  SHARD_PIDS=()
  for i in $(seq "$shards"); do
    port=$(free_port)
    bus=$(free_port)
    rm -f "$STATE/nodes-$shards-$i.conf"
    start_redis_server "cluster$shards-shard$i" "$port" --cluster-enabled yes \
      --cluster-config-file "nodes-$shards-$i.conf" --cluster-port "$bus"
    buses+=("$bus")
    seeds+=("127.0.0.1:$port")
  done
  for i in $(seq 2 "$shards"); do
    [ "$(rcli "${SHARD_PORTS[0]}" CLUSTER MEET 127.0.0.1 "${SHARD_PORTS[$((i - 1))]}" "${buses[$((i - 1))]}")" = OK ] ||
      die 4 "CLUSTER MEET of shard $i failed"
  done
  for i in $(seq 0 $((shards - 1))); do
    local lo=$((16384 * i / shards)) hi=$((16384 * (i + 1) / shards - 1))
    [ "$(rcli "${SHARD_PORTS[$i]}" CLUSTER ADDSLOTSRANGE "$lo" "$hi")" = OK ] ||
      die 4 "CLUSTER ADDSLOTSRANGE $lo $hi on shard $((i + 1)) failed"
  done
  # Every master sees every other one and every slot covered: at most 30 s.
  local ok
  for _ in $(seq 300); do
    ok=1
    for port in "${SHARD_PORTS[@]}"; do
      rcli "$port" CLUSTER INFO | awk -v n="$shards" -F: '
        $1 == "cluster_state" && $2 == "ok" { s = 1 }
        $1 == "cluster_known_nodes" && $2 == n { k = 1 }
        $1 == "cluster_slots_ok" && $2 == 16384 { o = 1 }
        END { exit !(s && k && o) }' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || die 4 "the $shards-shard cluster did not reach cluster_state:ok (see $LOGS)"
  REDIS_URL="redis+cluster://$(IFS=,; echo "${seeds[*]}")/"
}

stop_redis() {
  local pid
  for pid in "${SHARD_PIDS[@]}"; do stop_pid "$pid"; done
  SHARD_PORTS=()
  SHARD_PIDS=()
}

# The relay's limits are for real players; the generator is one address
# opening hundreds of connections and joins, and saturating.
RELAY_OPTS=(--log-format json --max-connections 100000 --max-connections-per-address 100000
  --join-rate 100000000 --join-burst 1000000 --message-rate 10000000 --message-burst 10000000
  --shutdown-timeout 3s)
# shellcheck disable=SC2206
[ -z "${BENCH_RELAY_ARGS:-}" ] || RELAY_OPTS+=($BENCH_RELAY_ARGS)
N1_PORT=$(free_port)
N2_PORT=$(free_port)
N1_PID="" N2_PID=""

start_nodes() {
  start_relay_pair bench "$LOGS/relay-1-$1.log" "$LOGS/relay-2-$1.log"
  sleep 0.5
}
stop_nodes() {
  stop_pid "$N1_PID"
  stop_pid "$N2_PID"
}

RELAY_URLS=(--url-a "ws://127.0.0.1:$N1_PORT/" --url-b "ws://127.0.0.1:$N2_PORT/")
watched_pids() {
  local list="relay-1=$N1_PID,relay-2=$N2_PID" i
  for i in "${!SHARD_PIDS[@]}"; do list+=",shard-$((i + 1))=${SHARD_PIDS[$i]}"; done
  echo "$list"
}

# Every shard's INFO commandstats, to RESULTS/NAME.WHEN.shard-I.txt.
snapshot_stats() {
  local name=$1 when=$2 i
  for i in "${!SHARD_PORTS[@]}"; do
    rcli "${SHARD_PORTS[$i]}" INFO commandstats >"$RESULTS/$name.$when.shard-$((i + 1)).txt" || true
  done
}
# Every shard's count of lobby keys, to RESULTS/NAME.keys (one line per shard).
count_lobbies() {
  local name=$1 port
  : >"$RESULTS/$name.keys"
  for port in "${SHARD_PORTS[@]}"; do
    timeout 10 redis-cli -p "$port" --scan --pattern 'lr:lobby:*' | wc -l >>"$RESULTS/$name.keys" || echo 0 >>"$RESULTS/$name.keys"
  done
}

# What the whole machine did over a run, to tell a quiet run from one that
# shared the cores with other work: the wall clock, the busy CPU ticks of
# /proc/stat, the ticks of the relay nodes and shards (/proc/PID/stat), and
# the CPU seconds of this shell's finished children (the generator,
# redis-cli), and the interrupt ticks (irq, softirq: loopback traffic is
# mostly there). One line: wall_s busy_ticks own_ticks children_s irq_ticks.
machine_snapshot() {
  local pid own=0 t
  for pid in "$N1_PID" "$N2_PID" "${SHARD_PIDS[@]}"; do
    t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }') || t=0
    own=$((own + ${t:-0}))
  done
  times >"$STATE/times.txt"
  printf '%s %s %s %s %s\n' "$(date +%s.%N)" \
    "$(awk '$1 == "cpu" { print $2 + $3 + $4 + $9; exit }' /proc/stat)" "$own" \
    "$(tail -1 "$STATE/times.txt" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } print s }')" \
    "$(awk '$1 == "cpu" { print $7 + $8; exit }' /proc/stat)"
}

# The machine's busy share (user, system, irq, steal) over one second, %.
busy_percent() {
  local a b
  a=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat)
  pause 1
  b=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat)
  echo "$a $b" | awk '{ t = $4 - $2; print (t > 0) ? int(100 * ($3 - $1) / t) : 0 }'
}
# Before a run: waits (at most QUIET_WAIT s) for the machine to be under 15%
# busy, other people's work on a shared machine having ended.
wait_quiet() {
  local deadline=$((SECONDS + QUIET_WAIT)) busy
  while :; do
    busy=$(busy_percent)
    [ "$busy" -lt 15 ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "(the machine is still ${busy}% busy after ${QUIET_WAIT} s; measuring anyway)"
      return 0
    fi
  done
}
# Other work over a run, % of a core, from its NAME.machine snapshots.
other_work() {
  awk -v tck="$(getconf CLK_TCK)" 'NR == 1 { split($0, a) } NR == 2 {
      wall = $1 - a[1]
      other = ($2 - a[2]) / tck - ($3 - a[3]) / tck - ($4 - a[4])
      print (wall > 0 && other > 0) ? int(100 * other / wall) : 0 }' "$1"
}

# Runs one measurement: NAME, WARMUP and DURATION seconds, then
# lobby-relay-bench options. Writes RESULTS/NAME.json (the bench's summary),
# NAME.txt (its report), the shards' commandstats before and after, the
# lobby keys per shard counted halfway through the measured interval, what
# the whole machine did (NAME.machine) and how many times it ran
# (NAME.tries): a run that shared the machine with a quarter of a core or
# more of other work is run again, up to RETRIES times.
FAILED=()
bench() {
  local name=$1 warmup=$2 duration=$3 rc try other
  shift 3
  for try in $(seq $((RETRIES + 1))); do
    echo "--- $name"
    wait_quiet
    rc=0
    snapshot_stats "$name" before
    machine_snapshot >"$RESULTS/$name.machine"
    "$BENCH" --label "$name" --json "$RESULTS/$name.json" --quiet --pids "$(watched_pids)" \
      "${RELAY_URLS[@]}" --warmup "${warmup}s" --duration "${duration}s" "$@" >"$RESULTS/$name.txt" &
    local pid=$!
    PIDS+=("$pid")
    # Lobbies form within a second here; halfway through the measured
    # interval they are all live.
    pause "$(python3 -c "print(0.5 + $warmup + $duration / 2)")"
    count_lobbies "$name"
    # Who else runs (the report flags runs that shared the machine).
    top -b -n 1 -w 200 2>/dev/null | head -20 >"$LOGS/$name.top" || true
    wait "$pid" || rc=$?
    forget_pid "$pid"
    machine_snapshot >>"$RESULTS/$name.machine"
    snapshot_stats "$name" after
    echo "$try" >"$RESULTS/$name.tries"
    other=$(other_work "$RESULTS/$name.machine")
    [ "$other" -ge 25 ] && [ "$try" -le "$RETRIES" ] && [ "$rc" = 0 ] || break
    echo "(other work took ${other}% of a core during the run: once more)"
  done
  cat "$RESULTS/$name.txt"
  echo "lobby keys per shard: $(paste -sd' ' "$RESULTS/$name.keys"); other work: ${other}% of a core"
  [ "$rc" = 0 ] || FAILED+=("$name")
}

# One configuration: TAG, then how its Redis is started.
run_config() {
  local tag=$1
  shift
  "$@"
  echo "Redis: $REDIS_URL"
  start_nodes "$tag-saturation"
  bench "$tag-saturation" "$(secs 2)" "$(secs 10)" --lobbies 200 --saturate --window 32 --size 64
  stop_nodes
  start_nodes "$tag-game"
  bench "$tag-game" "$(secs 3)" "$(secs 20)" --lobbies 100 --rate 30 --size 64
  stop_nodes
  stop_redis
}

# --- the machine -------------------------------------------------------------

python3 - "$STATE/machine.json" "$QUICK" "$OUT" "$ROOT" <<'EOF'
import json, os, platform, re, subprocess, sys
out = os.path.abspath(sys.argv[3])
os.chdir(sys.argv[4])
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""
lscpu = run("lscpu")
model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
virt = re.search(r"^Hypervisor vendor:\s*(.+)$", lscpu, re.M)
info = {
    "cpu_model": model.group(1) if model else platform.processor(),
    "cores": os.cpu_count(),
    "hypervisor": virt.group(1) if virt else None,
    "kernel": platform.release(),
    "redis": run("redis-server", "--version"),
    "commit": run("git", "rev-parse", "--short", "HEAD"),
    # Changes other than to the report itself (a previous run's).
    "dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":(exclude)" + out)),
    "date": run("date", "-u", "+%Y-%m-%d %H:%M UTC"),
    "loadavg_before": open("/proc/loadavg").read().split()[:3],
    "quick": sys.argv[2] == "1",
}
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF

# --- the runs ----------------------------------------------------------------

CONFIGS=(plain)
say "baseline: one plain Redis"
run_config plain start_plain
case $QUIET_WAIT$RETRIES in *[!0-9]*) die 2 "BENCH_QUIET_WAIT and BENCH_RETRIES are whole numbers" ;; esac
for s in $SHARD_COUNTS; do
  say "Redis Cluster of $s shard(s)"
  run_config "cluster$s" start_cluster "$s"
  CONFIGS+=("cluster$s")
done

cleanup

# --- the report --------------------------------------------------------------

ELAPSED=$(($(date +%s) - STARTED_AT))
COMMAND="scripts/bench-cluster.sh"
[ "$QUICK" = 1 ] && COMMAND="BENCH_QUICK=1 $COMMAND"
[ -z "${BENCH_SHARDS:-}" ] || COMMAND="BENCH_SHARDS=\"$SHARD_COUNTS\" $COMMAND"
[ -z "${BENCH_RETRIES:-}" ] || COMMAND="BENCH_RETRIES=$RETRIES $COMMAND"
[ -z "${BENCH_QUIET_WAIT:-}" ] || COMMAND="BENCH_QUIET_WAIT=$QUIET_WAIT $COMMAND"
say "writing the Redis Cluster section of $OUT"
python3 "$ROOT/bench/cluster_report.py" --results "$RESULTS" --logs "$LOGS" \
  --machine "$STATE/machine.json" --command "$COMMAND" --elapsed "$ELAPSED" \
  --out "$OUT" "${CONFIGS[@]}"
echo "done in ${ELAPSED} s: $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "$PROG: runs with problems: ${FAILED[*]}" >&2
  exit 1
fi
