# Shared by scripts/bench.sh and scripts/bench-cluster.sh (sourced, not run):
# messages, installing missing Debian packages, and the processes a
# benchmark starts (each remembered in PIDS and stopped by its pid, on exit
# too). The sourcing script sets PROG first.

say() { printf '\n==> %s\n' "$*"; }
die() {
  local code=$1
  shift
  echo "$PROG: $*" >&2
  exit "$code"
}

need_packages() {
  command -v apt-get >/dev/null 2>&1 || die 3 "missing: $*; install them and run this again"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      die 3 "missing: $*; install them with: sudo apt-get install -y $*"
    fi
  fi
  say "installing $* (apt-get)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops one process we started: SIGTERM, then SIGKILL after 5 s.
stop_pid() {
  local pid=$1 i
  if ! kill -TERM "$pid" 2>/dev/null; then
    forget_pid "$pid"
    return 0
  fi
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}
forget_pid() {
  local kept=() i
  for i in "${PIDS[@]}"; do [ "$i" = "$1" ] || kept+=("$i"); done
  PIDS=("${kept[@]+"${kept[@]}"}")
}
# A sleep that a signal to this script interrupts at once (bash defers its
# traps while a foreground child runs).
pause() {
  sleep "$1" &
  local pid=$!
  PIDS+=("$pid")
  wait "$pid" || true
  forget_pid "$pid"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until a TCP port accepts connections (and, for a relay, /readyz is
# 200), at most 10 s.
wait_port() {
  local port=$1 path=${2:-} pid=$3 i
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -n "$path" ]; then
      curl -fs -o /dev/null "http://127.0.0.1:$port$path" && return 0
    elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# Starts relay nodes 1 and 2 ("$RELAY" serve, node ids ID-1 and ID-2) on
# N1_PORT and N2_PORT, on REDIS_URL with RELAY_OPTS, their output in LOG1 and
# LOG2; sets N1_PID and N2_PID and waits until both are ready.
# Usage: start_relay_pair ID LOG1 LOG2
start_relay_pair() {
  local id=$1 log1=$2 log2=$3
  "$RELAY" serve --listen "127.0.0.1:$N1_PORT" --node-id "$id-1" --redis-url "$REDIS_URL" \
    "${RELAY_OPTS[@]}" >"$log1" 2>&1 &
  N1_PID=$!
  PIDS+=("$N1_PID")
  "$RELAY" serve --listen "127.0.0.1:$N2_PORT" --node-id "$id-2" --redis-url "$REDIS_URL" \
    "${RELAY_OPTS[@]}" >"$log2" 2>&1 &
  N2_PID=$!
  PIDS+=("$N2_PID")
  wait_port "$N1_PORT" /readyz "$N1_PID" || die 4 "relay node 1 did not start (see $log1)"
  wait_port "$N2_PORT" /readyz "$N2_PID" || die 4 "relay node 2 did not start (see $log2)"
}

# Installs what a run against real relay nodes needs when it is missing
# (redis-server, redis-cli, python3, curl), and checks for cargo.
need_bench_tools() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    need_packages "${missing[@]}"
  fi
  command -v cargo >/dev/null 2>&1 || die 3 "cargo is needed (https://rustup.rs)"
}

# Builds the release binaries in TARGET; sets RELAY and BENCH.
build_release() {
  say "building (release)"
  (cd "$ROOT" && cargo build --release --locked --bins) || die 3 "the build failed"
  RELAY=$TARGET/release/lobby-relay
  BENCH=$TARGET/release/lobby-relay-bench
  if [ ! -x "$RELAY" ] || [ ! -x "$BENCH" ]; then
    die 3 "no binaries in $TARGET/release"
  fi
}
