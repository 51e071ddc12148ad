#!/usr/bin/env bash
# Quick match next to passphrase joins: how many lobbies two relay nodes on
# one Redis form a second when every player queues (`{"type":"join",
# "queue":...}`: the relay seats it, atomically with the queue's state)
# against when each pair joins a passphrase of its own. Builds the release
# binaries, starts a private redis-server and two nodes on free loopback
# ports, runs ROUNDS rounds of both, alternating (the order flips each
# round), each forming LOBBIES lobbies (2 x LOBBIES players, player A of each
# on node 1, player B on node 2, 256 lobbies being formed at once), and
# writes the medians into the section "Quick match" of docs/benchmarks.md
# (and prints it).
#
# Usage: scripts/bench-quickmatch.sh      (about 1 minute after the build)
#   BENCH_ROUNDS=N    rounds of each kind [5]
#   BENCH_LOBBIES=N   lobbies per run [2000]
#   BENCH_OUT         the report to update [docs/benchmarks.md]; - prints only
# Needs: cargo, redis-server, redis-cli, curl, python3. Run it on a quiet
# machine: rates and CPU move with whatever else runs (this machine's noise
# is about 8%).
#
# Exit status: 0 done; 1 a run failed (a lobby not formed); 4 a server did
# not start. Everything it started is stopped by its pid, on exit too.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROG=${0##*/}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
ROUNDS=${BENCH_ROUNDS:-5}
LOBBIES=${BENCH_LOBBIES:-2000}
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
case ${1:-} in
  -h | --help)
    sed -n '2,/^set -euo pipefail$/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  "") ;;
  *) echo "$PROG: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lobby-relay-bench-quickmatch.XXXXXX")
trap 'cleanup; rm -rf "$WORK"' EXIT

need_bench_tools
build_release
STARTED_AT=$(date +%s)

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT" "" "$REDIS_PID" || die 4 "redis-server did not start (see $WORK/redis.log)"
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
RELAY_OPTS=(--log-format json --max-connections 100000 --max-connections-per-address 100000
  --join-rate 100000000 --join-burst 1000000 --message-rate 10000000 --message-burst 10000000
  --shutdown-timeout 3s)
N1_PORT=$(free_port)
N2_PORT=$(free_port)
start_relay_pair qm "$WORK/relay-1.log" "$WORK/relay-2.log"
URLS=(--url-a "ws://127.0.0.1:$N1_PORT/" --url-b "ws://127.0.0.1:$N2_PORT/")
WATCH="relay-1=$N1_PID,relay-2=$N2_PID,redis=$REDIS_PID"

# run NAME [bench options]: one run of LOBBIES lobbies, held 1 s, its JSON in
# $WORK/NAME.json; then waits until Redis holds no lobby (the players gone).
run() {
  local name=$1
  shift
  echo "==> $name" >&2
  "$BENCH" --quiet --label "$name" --json "$WORK/$name.json" "${URLS[@]}" --pids "$WATCH" \
    --lobbies "$LOBBIES" --idle --duration 1s "$@" >"$WORK/$name.txt" ||
    { cat "$WORK/$name.txt" >&2; die 1 "$name failed"; }
  for _ in $(seq 100); do
    [ -z "$(redis-cli -p "$REDIS_PORT" --scan --pattern 'lr:lobby:*' | head -1)" ] && return 0
    sleep 0.1
  done
}

for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    run "passphrase-$round"
    run "queue-$round" --queue "bench-$round"
  else
    run "queue-$round" --queue "bench-$round"
    run "passphrase-$round"
  fi
done

PYTHONPATH="$ROOT/bench" python3 - "$WORK" "$ROUNDS" "$LOBBIES" "$OUT" "$(($(date +%s) - STARTED_AT))" <<'EOF'
import datetime, json, os, statistics, subprocess, sys
from section import put_section
work, rounds, lobbies, out, took = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def runs(kind):
    return [json.load(open(os.path.join(work, f"{kind}-{r}.json"))) for r in range(1, rounds + 1)]
def cpu(run, name):
    j = run["joins"]
    return sum(c for p, c in zip(run["processes"], j["processes_cpu_s"]) if p["name"].startswith(name))
rows = {}
for kind in ("passphrase", "queue"):
    rs = runs(kind)
    rate = [r["joins"]["lobbies_per_s"] for r in rs]
    relay = [(cpu(r, "relay")) * 1e6 / r["joins"]["formed"] for r in rs]
    redis = [(cpu(r, "redis")) * 1e6 / r["joins"]["formed"] for r in rs]
    p99 = [r["joins"]["join_to_ready_ms"]["p99"] for r in rs]
    failed = sum(r["joins"]["failed"] for r in rs)
    rows[kind] = (rate, relay, redis, p99, failed)
commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(out)) if out != "-" else ".",
                         "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
L = []
w = L.append
w("<!-- begin bench-quickmatch: written by scripts/bench-quickmatch.sh, which rewrites everything down to the end comment -->")
w("## Quick match: joins per second next to passphrase joins")
w("")
w(f"Command: `scripts/bench-quickmatch.sh` (took {took} s after the build), on {now}, commit `{commit}`.")
w("")
w(f"Two release-built nodes on one Redis; each run forms {lobbies:,} lobbies ({2 * lobbies:,} players, "
  "player A of each on node 1, player B on node 2, 256 lobbies being formed at once, each player "
  "connecting, joining and waiting for `ready`). *Passphrase*: the two players of a lobby join a "
  "passphrase of their own (`join.lua`, one step). *Queue*: every player joins the same queue "
  "(`reserve.lua`, then subscribe, then `join.lua` taking the reservation: two steps, the queue's "
  "state on one key that every join touches). "
  f"Medians of {rounds} rounds of each, alternating (the order flips each round); min–max in brackets.")
w("")
w("| join | lobbies formed / s | players / s | relay CPU per lobby (both nodes) | Redis CPU per lobby | join to `ready` p99 | lobbies not formed |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for kind, label in (("passphrase", "passphrase"), ("queue", "queue (quick match)")):
    rate, relay, redis, p99, failed = rows[kind]
    med = statistics.median
    w(f"| {label} | {med(rate):,.0f} ({min(rate):,.0f}–{max(rate):,.0f}) | {2 * med(rate):,.0f} | "
      f"{med(relay):,.0f} µs | {med(redis):,.0f} µs | {med(p99):.1f} ms | {failed} |")
w("")
ratio = statistics.median(rows["queue"][0]) / statistics.median(rows["passphrase"][0])
w(f"Quick match forms lobbies at {ratio * 100:.0f}% of the passphrase rate on this machine "
  "(2 cores shared by the generator, both nodes and Redis).")
w("<!-- end bench-quickmatch -->")
section = "\n".join(L)
print("\n".join(L[1:-1]))
put_section(out, "bench-quickmatch", section)
EOF
