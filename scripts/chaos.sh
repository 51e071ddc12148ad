#!/usr/bin/env bash
# The chaos run (issue 20): pairs of Rust clients (the lobby-relay-client
# crate) play across a local cluster of three relay nodes behind HAProxy
# while their connections are cut at random, and one node is killed with
# SIGKILL and restarted; every game message must arrive exactly once and in
# order (docs/protocol.md, "What survives what": a killed node loses
# nothing). See docs/chaos.md for what the figures mean.
#
#   1. builds the release binaries: the relay, and the client crate's
#      example `chaos` (clients/rust/examples/chaos.rs)
#   2. brings a cluster up with scripts/cluster.sh in a directory of its own
#      (CHAOS_DIR/cluster) on free ports, so that it meets no other cluster
#   3. runs the chaos example against HAProxy: --pairs lobbies of two
#      players, each player through a forwarder of its own that the example
#      cuts at random (at least --min-cuts cuts), --seconds of play
#   4. meanwhile, --kill-at seconds into the play, kills --kill with SIGKILL
#      (its pid from CHAOS_DIR/cluster), and CHAOS_RESTART_AFTER seconds
#      later starts it again (scripts/cluster.sh restart) and waits until it
#      is ready; both moments go to the example's --events-file
#   5. prints the figures (a table, and CHAOS_DIR/figures.json) and takes
#      the cluster down, on exit too (Ctrl-C included)
#
# Usage: scripts/chaos.sh [--seconds N] [--pairs N] [--min-cuts N]
#                         [--kill relay-N] [--kill-at S] [--help]
#
#   --seconds N     seconds of play [60]
#   --pairs N       lobbies of two players [20]
#   --min-cuts N    fewest cuts of live connections for a valid run [100]
#   --kill NODE     the node to kill: relay-1, relay-2 or relay-3 [relay-2]
#   --kill-at S     seconds into the play [a third of --seconds]
#
# Environment:
#   CHAOS_DIR            state: the cluster's logs, the example's output,
#                        figures.json, events [target/chaos-state]
#   CHAOS_RESTART_AFTER  seconds between the kill and the restart [5]: longer
#                        than the other nodes take to find it dead (4/3 of
#                        the relay's --node-timeout, 3 s)
#   CHAOS_ARGS           more options for the example (see
#                        target/release/examples/chaos --help), e.g.
#                        "--rate 30 --max-outage-ms 2000"
#   LOBBY_RELAY_*        reach every node, as for scripts/cluster.sh
#   CARGO_TARGET_DIR     where cargo builds (as for cargo)
#
# Needs: cargo, python3 (free ports), curl, redis-server, redis-cli and
# haproxy (scripts/cluster.sh installs the last three with apt-get when it
# may). Takes about --seconds + 40 s after the build.
#
# Exit status: 0 every message arrived once and in order; 1 the promise was
# broken (duplicates, reordering, gaps, a seat lost: the figures say where),
# or the run did not finish in time; 2 usage; 3 a tool is missing or the
# build failed, or the run was not what was asked (fewer cuts than
# --min-cuts, the pairs could not join, the node was not killed); 4 the
# cluster did not start, or the killed node did not come back.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SECONDS_OF_PLAY=60
PAIRS=20
MIN_CUTS=100
KILL=relay-2
KILL_AT=""
number() { # NAME VALUE: a whole number or exit 2
  case $2 in
    '' | *[!0-9]*)
      echo "$PROG: $1 must be a whole number, not '$2' (try --help)" >&2
      exit 2
      ;;
  esac
}
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help)
      sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    --seconds | --pairs | --min-cuts | --kill | --kill-at)
      [ $# -ge 2 ] || {
        echo "$PROG: $1 needs a value (try --help)" >&2
        exit 2
      }
      case $1 in
        --seconds) number "$1" "$2" && SECONDS_OF_PLAY=$2 ;;
        --pairs) number "$1" "$2" && PAIRS=$2 ;;
        --min-cuts) number "$1" "$2" && MIN_CUTS=$2 ;;
        --kill-at) number "$1" "$2" && KILL_AT=$2 ;;
        --kill) KILL=$2 ;;
      esac
      shift 2
      ;;
    *)
      echo "$PROG: unknown argument $1 (try --help)" >&2
      exit 2
      ;;
  esac
done
case $KILL in
  relay-1 | relay-2 | relay-3) ;;
  *)
    echo "$PROG: --kill must be relay-1, relay-2 or relay-3, not '$KILL'" >&2
    exit 2
    ;;
esac
if [ "$SECONDS_OF_PLAY" -lt 1 ] || [ "$PAIRS" -lt 1 ]; then
  echo "$PROG: --seconds and --pairs must be at least 1" >&2
  exit 2
fi
KILL_AT=${KILL_AT:-$((SECONDS_OF_PLAY / 3))}
if [ "$KILL_AT" -ge "$SECONDS_OF_PLAY" ]; then
  echo "$PROG: --kill-at ($KILL_AT) must come before the end of the play (--seconds $SECONDS_OF_PLAY)" >&2
  exit 2
fi
RESTART_AFTER=${CHAOS_RESTART_AFTER:-5}
number CHAOS_RESTART_AFTER "$RESTART_AFTER"

# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

STATE=${CHAOS_DIR:-$ROOT/target/chaos-state}
case $STATE in /*) ;; *) STATE=$PWD/$STATE ;; esac
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
CLUSTER=$STATE/cluster
EVENTS=$STATE/events
FIGURES=$STATE/figures.json
OUTPUT=$STATE/chaos.txt
CHAOS_LOG=$STATE/chaos.log

command -v cargo >/dev/null 2>&1 || die 3 "cargo is needed (https://rustup.rs)"
command -v python3 >/dev/null 2>&1 || need_packages python3
command -v curl >/dev/null 2>&1 || need_packages curl

say "building (release): the relay and the chaos example"
(cd "$ROOT" && cargo build --release --locked --bin lobby-relay) || die 3 "the relay's build failed"
(cd "$ROOT" && cargo build --release --locked -p lobby-relay-client --example chaos) ||
  die 3 "the chaos example's build failed"
RELAY=$TARGET/release/lobby-relay
CHAOS=$TARGET/release/examples/chaos
[ -x "$RELAY" ] && [ -x "$CHAOS" ] || die 3 "no binaries in $TARGET/release"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- src clients Cargo.toml Cargo.lock 2>/dev/null ||
  COMMIT="$COMMIT + uncommitted changes"

# A cluster of our own: its directory, free ports.
cluster() { CLUSTER_DIR=$CLUSTER "$ROOT/scripts/cluster.sh" "$@"; }
if [ -d "$CLUSTER" ]; then
  cluster down >/dev/null 2>&1 || true # a run that ended badly
fi
mkdir -p "$STATE"
rm -rf "$CLUSTER"
rm -f "$EVENTS" "$FIGURES" "$OUTPUT" "$CHAOS_LOG"
: >"$EVENTS"

CLUSTER_UP=0
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  cleanup # our own processes (bench-lib), by pid
  if [ $CLUSTER_UP -eq 1 ]; then
    say "taking the cluster down"
    cluster down || true
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ports=()
while [ ${#ports[@]} -lt 6 ]; do
  port=$(free_port)
  case " ${ports[*]-} " in *" $port "*) ;; *) ports+=("$port") ;; esac
done
say "starting the cluster in $CLUSTER (HAProxy on 127.0.0.1:${ports[0]})"
CLUSTER_UP=1
CLUSTER_PORT=${ports[0]} CLUSTER_NODE_PORTS="${ports[1]} ${ports[2]} ${ports[3]}" \
  CLUSTER_REDIS_PORT=${ports[4]} CLUSTER_STATS_PORT=${ports[5]} LOBBY_RELAY_BIN=$RELAY \
  cluster up || die 4 "the cluster did not start (logs in $CLUSTER)"
URL=ws://127.0.0.1:${ports[0]}/

now_ms() { date +%s%3N; }

# The example, in the background; its progress goes to CHAOS_LOG.
ARGS=(--url "$URL" --pairs "$PAIRS" --seconds "$SECONDS_OF_PLAY" --min-cuts "$MIN_CUTS"
  --events-file "$EVENTS" --json "$FIGURES")
# shellcheck disable=SC2206 # options, split as words
[ -z "${CHAOS_ARGS:-}" ] || ARGS+=($CHAOS_ARGS)
say "playing: $CHAOS ${ARGS[*]}"
"$CHAOS" "${ARGS[@]}" >"$OUTPUT" 2>"$CHAOS_LOG" &
CHAOS_PID=$!
PIDS+=("$CHAOS_PID")
tail -f "$CHAOS_LOG" --pid "$CHAOS_PID" 2>/dev/null &
PIDS+=("$!")

# The play starts once every pair is in a full lobby (the example says so).
deadline=$((SECONDS + 90))
until grep -q 'playing for' "$CHAOS_LOG" 2>/dev/null; do
  kill -0 "$CHAOS_PID" 2>/dev/null || break
  [ $SECONDS -lt $deadline ] || die 3 "the players were not all in a lobby after 90 s"
  sleep 0.1
done
KILLED=0
if kill -0 "$CHAOS_PID" 2>/dev/null; then
  pause "$KILL_AT"
  pid=$(cat "$CLUSTER/$KILL.pid" 2>/dev/null || true)
  if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--node-id $KILL "; then
    kill -KILL "$pid"
    echo "kill $(now_ms) $KILL" >>"$EVENTS"
    KILLED=1
    say "killed $KILL (pid $pid) with SIGKILL, $KILL_AT s into the play; restarting it in $RESTART_AFTER s"
    pause "$RESTART_AFTER"
    cluster restart "$KILL" || die 4 "$KILL did not come back (see $CLUSTER/$KILL.log)"
    echo "ready $(now_ms) $KILL" >>"$EVENTS"
  else
    echo "$PROG: no running $KILL to kill (pid file: '$pid')" >&2
  fi
fi

# The example bounds its own time; this bounds it too.
deadline=$((SECONDS + SECONDS_OF_PLAY + 120))
while kill -0 "$CHAOS_PID" 2>/dev/null; do
  if [ $SECONDS -ge $deadline ]; then
    stop_pid "$CHAOS_PID"
    die 1 "the chaos example did not finish in time (see $CHAOS_LOG)"
  fi
  sleep 0.2
done
rc=0
wait "$CHAOS_PID" || rc=$?
forget_pid "$CHAOS_PID"
sleep 0.3 # the tail's last lines

say "figures (commit $COMMIT; $(nproc 2>/dev/null || echo '?') cores; $(date -u '+%Y-%m-%d %H:%M UTC'))"
cat "$OUTPUT"
echo "events (epoch ms): $(tr '\n' ' ' <"$EVENTS")"
echo "JSON: $FIGURES; logs: $CHAOS_LOG, $CLUSTER/*.log"
if [ $KILLED -eq 0 ]; then
  [ "$rc" -ne 0 ] || rc=3
  echo "$PROG: no node was killed: not the run that was asked" >&2
fi
exit "$rc"
