#!/usr/bin/env bash
# Soak: does a relay node's memory stay flat under a long game load? Builds
# the release binaries, starts a private redis-server and two relay nodes on
# free loopback ports, and runs the load generator (every lobby has player A
# on node 1 and player B on node 2, so every message crosses Redis):
#
#   1. warm-up round: 100 lobbies x 2 players x 30 Hz (6,000 msg/s) for
#      SOAK_WARMUP seconds; then the generator disconnects and the nodes sit
#      idle for 5 s: each node's RSS is its baseline
#   2. soak round: the same load on fresh lobbies for --minutes minutes;
#      each node's RSS is sampled every 15 s
#   3. the generator disconnects, the nodes sit idle for 5 s: RSS again
#
# and fails when either node's RSS after the soak is more than SOAK_BOUND_MIB
# above its baseline, or when the generator saw a message lost, duplicated,
# reordered or misrouted in either round. Writes the section "Soak" of
# docs/benchmarks.md (between its begin/end comments, in place; the rest of
# the file is left as scripts/bench.sh wrote it). Nothing is left running
# (every process started here is stopped by its pid, on exit too).
#
# Usage: scripts/soak.sh [--minutes N] [--help]
#
#   --minutes N       length of the soak round, 1 to 120 [10]
#
# Environment:
#   SOAK_BOUND_MIB    the most a node's RSS may grow, MiB [4]
#   SOAK_WARMUP       seconds of the warm-up round [60]
#   SOAK_RATE         messages per second per player [30]
#   SOAK_LOBBIES      lobbies (two players each) [100]
#   SOAK_DIR          state: logs, RSS samples, JSON results
#                     [target/soak-state]
#   SOAK_OUT          the report it rewrites its section of
#                     [docs/benchmarks.md]; SOAK_OUT=- writes no report
#   SOAK_RELAY_ARGS   extra options for both relay nodes
#   CARGO_TARGET_DIR  where cargo builds (as for cargo)
#
# Needs: cargo, python3, curl, redis-server and redis-cli (installed with
# apt-get when missing, as scripts/test.sh does).
#
# Exit status: 0 memory stayed within the bound and nothing was lost,
# duplicated or reordered; 1 it did not (the report says which); 2 usage;
# 3 a tool is missing or the build failed; 4 a server did not start.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

MINUTES=10
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help)
      sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    --minutes)
      [ $# -ge 2 ] || { echo "$PROG: --minutes needs a number (try --help)" >&2; exit 2; }
      MINUTES=$2
      shift 2
      ;;
    *)
      echo "$PROG: unknown argument $1 (try --help)" >&2
      exit 2
      ;;
  esac
done
case $MINUTES in
  '' | *[!0-9]*) echo "$PROG: --minutes must be a whole number from 1 to 120, not '$MINUTES'" >&2; exit 2 ;;
esac
if [ "$MINUTES" -lt 1 ] || [ "$MINUTES" -gt 120 ]; then
  echo "$PROG: --minutes must be from 1 to 120, not $MINUTES" >&2
  exit 2
fi

# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

BOUND_MIB=${SOAK_BOUND_MIB:-4}
WARMUP=${SOAK_WARMUP:-60}
RATE=${SOAK_RATE:-30}
LOBBIES=${SOAK_LOBBIES:-100}
STATE=${SOAK_DIR:-$ROOT/target/soak-state}
OUT=${SOAK_OUT:-$ROOT/docs/benchmarks.md}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
LOGS=$STATE/logs
RESULTS=$STATE/results
STARTED_AT=$(date +%s)

need_bench_tools

mkdir -p "$LOGS" "$RESULTS"
rm -f "$RESULTS"/*

build_release
# What was built (the report names it; commits made during the run do not).
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || COMMIT="$COMMIT + uncommitted changes"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$STATE" --logfile "$LOGS/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT" "" "$REDIS_PID" || die 4 "redis-server did not start (see $LOGS/redis.log)"
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/

# The limits for real players lifted: the generator is one address.
RELAY_OPTS=(--log-format json --max-connections 100000 --max-connections-per-address 100000
  --join-rate 100000000 --join-burst 1000000 --message-rate 10000000 --message-burst 10000000
  --shutdown-timeout 3s)
# shellcheck disable=SC2206
[ -z "${SOAK_RELAY_ARGS:-}" ] || RELAY_OPTS+=($SOAK_RELAY_ARGS)
N1_PORT=$(free_port)
N2_PORT=$(free_port)
start_relay_pair soak "$LOGS/relay-1.log" "$LOGS/relay-2.log"

# RSS of a process, KiB.
rss() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
SAMPLES=$STATE/rss.csv
echo "seconds,phase,relay1_kib,relay2_kib" >"$SAMPLES"
sample() { echo "$(($(date +%s) - STARTED_AT)),$1,$(rss "$N1_PID"),$(rss "$N2_PID")" >>"$SAMPLES"; }
sample started

FAILED=()
# One round of game load: NAME, seconds measured.
round() {
  local name=$1 seconds=$2 rc=0
  "$BENCH" --label "$name" --json "$RESULTS/$name.json" \
    --url-a "ws://127.0.0.1:$N1_PORT/" --url-b "ws://127.0.0.1:$N2_PORT/" \
    --lobbies "$LOBBIES" --rate "$RATE" --size 64 --warmup 2s --duration "${seconds}s" \
    --pids "relay-1=$N1_PID,relay-2=$N2_PID,redis=$REDIS_PID" >"$RESULTS/$name.txt" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  # Sampled every 15 s while it runs.
  while kill -0 "$pid" 2>/dev/null; do
    local i
    for i in $(seq 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && sample "$name"
  done
  wait "$pid" || rc=$?
  forget_pid "$pid"
  cat "$RESULTS/$name.txt"
  [ "$rc" = 0 ] || FAILED+=("$name")
  kill -0 "$N1_PID" 2>/dev/null || die 4 "relay node 1 exited (see $LOGS/relay-1.log)"
  kill -0 "$N2_PID" 2>/dev/null || die 4 "relay node 2 exited (see $LOGS/relay-2.log)"
}

say "warm-up round: $LOBBIES lobbies x 2 players x $RATE Hz for $WARMUP s"
round warmup "$WARMUP"
pause 5
sample baseline
say "soak round: the same for $MINUTES min (RSS sampled every 15 s into $SAMPLES)"
round soak $((MINUTES * 60))
pause 5
sample after

PYTHONPATH="$ROOT/bench" python3 - "$SAMPLES" "$RESULTS" "$BOUND_MIB" "$MINUTES" "$WARMUP" "$LOBBIES" "$RATE" \
  "$COMMIT" \
  "$(($(date +%s) - STARTED_AT))" "${FAILED[*]+${FAILED[*]}}" "$OUT" "$STATE/verdict" "$ROOT" <<'EOF'
import csv, datetime, json, os, sys
from section import put_section
(samples, results, bound, minutes, warmup, lobbies, rate, commit, took, failed, out,
 verdict_path, root) = sys.argv[1:]
bound = float(bound)
rows = list(csv.DictReader(open(samples)))
base = next(r for r in rows if r["phase"] == "baseline")
after = next(r for r in rows if r["phase"] == "after")
soak = [r for r in rows if r["phase"] == "soak"]
runs = {name: json.load(open(os.path.join(results, name + ".json"))) for name in ("warmup", "soak")}

def mib(kib):
    return int(kib) / 1024

problems = []
growth = {}
for node in ("relay1", "relay2"):
    g = mib(after[node + "_kib"]) - mib(base[node + "_kib"])
    growth[node] = g
    if g > bound:
        problems.append(f"{node}: RSS grew {g:.1f} MiB (bound {bound:g} MiB)")
delivered = {}
for name, run in runs.items():
    m = run["messages"]
    delivered[name] = sum(m["received"])
    for what, n in (("lost", sum(m["lost"])), ("duplicated", m["duplicates"]),
                    ("reordered", m["reordered"]), ("misrouted", m["misrouted"]),
                    ("disconnected", m["disconnects"])):
        if n:
            problems.append(f"{name}: {n} {what}")
    if not run.get("ok", False):
        problems.extend(f"{name}: {p}" for p in run.get("problems", []))
if failed:
    problems.append(f"the generator reported a failed run: {failed}")
problems = list(dict.fromkeys(problems))

# Growth while loaded: a least-squares slope over the soak's samples.
def slope(node):
    pts = [(int(r["seconds"]), mib(r[node + "_kib"])) for r in soak]
    if len(pts) < 2:
        return 0.0
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    den = sum((p[0] - mx) ** 2 for p in pts) or 1
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den * 60 * 1024  # KiB/min

L = []
w = L.append
w("<!-- begin soak: written by scripts/soak.sh, which rewrites everything down to the end comment -->")
w("## Soak: memory under a long game load")
w("")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
w(f"Command: `scripts/soak.sh --minutes {minutes}` (took {took} s after the build), on {now}, commit `{commit}`.")
w("")
w(f"Two relay nodes on one Redis; {lobbies} lobbies x 2 players x {rate} Hz, 64-byte messages, "
  f"every message across Redis. A warm-up round of {warmup} s, 5 s idle (baseline RSS), "
  f"then the soak round of {minutes} min on fresh lobbies, 5 s idle (RSS after). "
  f"The script fails when a node grows more than {bound:g} MiB or a message is lost, duplicated or reordered.")
w("")
w("| node | baseline RSS | during the soak (min–max) | slope while loaded | after the soak | growth |")
w("| --- | --- | --- | --- | --- | --- |")
for node, label in (("relay1", "relay-1"), ("relay2", "relay-2")):
    during = [mib(r[node + "_kib"]) for r in soak] or [0]
    w(f"| {label} | {mib(base[node + '_kib']):.1f} MiB | {min(during):.1f}–{max(during):.1f} MiB | "
      f"{slope(node):+.0f} KiB/min | {mib(after[node + '_kib']):.1f} MiB | {growth[node]:+.2f} MiB |")
w("")
m = runs["soak"]["messages"]
w(f"Soak round: {delivered['soak']:,} messages delivered ({runs['soak']['delivered_per_s']:,.0f}/s); "
  f"lost / duplicated / reordered: {sum(m['lost'])} / {m['duplicates']} / {m['reordered']}; "
  f"latency p99 {runs['soak']['latency_ms']['p99']:.3f} ms. "
  f"Verdict: **{'passed' if not problems else 'FAILED: ' + '; '.join(problems)}**.")
w("")
shown = os.path.relpath(samples, root) if samples.startswith(root + "/") else samples
w(f"The RSS samples (every 15 s) are in `{shown}` after a run.")
w("<!-- end soak -->")
section = "\n".join(L)
print()
print("\n".join(L[1:-1]))
with open(verdict_path, "w") as f:
    f.write("ok\n" if not problems else "\n".join(problems) + "\n")
put_section(out, "soak", section)
EOF
[ "$(cat "$STATE/verdict")" = ok ] || exit 1
