#!/usr/bin/env bash
# A local lobby-relay cluster: one private redis-server, three relay nodes
# (relay-1, relay-2, relay-3) sharing it, and HAProxy in front of them
# (deploy/haproxy.cfg), all on the loopback interface.
#
# Usage: scripts/cluster.sh up|down|status|--help
#        scripts/cluster.sh restart relay-N
#
#   up      install redis-server and haproxy if missing (apt-get, as root or
#           with passwordless sudo), build the release binary, start
#           everything, wait until HAProxy answers and a node is ready, and
#           print the URLs. Refuses if a cluster is already up in CLUSTER_DIR.
#   down    stop exactly the processes recorded in CLUSTER_DIR (SIGTERM, then
#           SIGKILL after CLUSTER_STOP_TIMEOUT seconds). Fine if none runs.
#           The logs stay.
#   status  each process (running or not), each node's /readyz answer, the
#           live nodes and the lobby count in Redis.
#   restart relay-N
#           stops that node if it runs (SIGTERM, as `down` does), starts it
#           again exactly as `up` did (the same binary, options and
#           LOBBY_RELAY_* environment, recorded by `up`; the caller's
#           LOBBY_RELAY_* are ignored), and waits until its /readyz answers
#           200. E.g. after it was killed (`kill -9 $(cat CLUSTER_DIR/relay-2.pid)`).
#
# Environment (defaults in brackets):
#   CLUSTER_DIR          state: pid files, logs [.cluster in the repository]
#   CLUSTER_PORT         HAProxy, where players connect [8765]
#   CLUSTER_NODE_PORTS   the three nodes' ports ["18761 18762 18763"]
#   CLUSTER_REDIS_PORT   the private redis-server [16379]
#   CLUSTER_STATS_PORT   HAProxy's stats page [18760]
#   CLUSTER_STOP_TIMEOUT seconds between SIGTERM and SIGKILL in `down` [10]
#   LOBBY_RELAY_BIN      a lobby-relay binary to run instead of building one
#   LOBBY_RELAY_*        any other relay option reaches every node (e.g.
#                        LOBBY_RELAY_LOBBY_CAPACITY=4); the script sets
#                        LOBBY_RELAY_DRAIN_DELAY=2s unless you do. Listen
#                        address, node id, Redis URL and log format are set
#                        by the script.
#
# `status`, `down` and `restart` use the ports recorded by `up`
# (CLUSTER_DIR/cluster.env; `restart` also the binary there and the nodes'
# environment in CLUSTER_DIR/relay.env), so only CLUSTER_DIR matters for them.
#
# Files in CLUSTER_DIR: NAME.pid and NAME.log for redis, relay-1..3 (JSON log
# lines) and haproxy (a line per connection, and node state changes).
#
# HAProxy connects to the nodes from 127.0.0.2 and sends a PROXY protocol
# header; the nodes trust that address only (--trusted-proxies 127.0.0.2
# --proxy-protocol), so direct connections to a node stay plain. (Linux: all
# of 127.0.0.0/8 is the loopback.) All local players share the address
# 127.0.0.1, so the per-address limits (LOBBY_RELAY_JOIN_RATE,
# LOBBY_RELAY_MAX_CONNECTIONS_PER_ADDRESS) count them together.
#
# Exit status: 0 success (`status`: every process runs and every node is
# ready); 1 failure (`up`: something did not start, and whatever did was
# stopped again; `status`: something recorded is not running or a node is not
# ready; `restart`: the node did not come back ready within 20 s); 2 usage
# error; 3 redis-server, redis-cli or haproxy is missing and cannot be
# installed, or the build failed; 4 `up`: a cluster is already up in
# CLUSTER_DIR, or a port is taken; 5 `status`, `restart`: no cluster in
# CLUSTER_DIR.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}
# Debian installs haproxy in /usr/sbin, which is not on a user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

usage() {
  # The comment block above, without its `#`.
  sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

say() { printf '%s\n' "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
  local code=$1
  shift
  warn "$*"
  exit "$code"
}

# --- configuration -----------------------------------------------------------

absolute() {
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}

CLUSTER_DIR=$(absolute "${CLUSTER_DIR:-$ROOT/.cluster}")
STOP_TIMEOUT=${CLUSTER_STOP_TIMEOUT:-10}
[[ $STOP_TIMEOUT =~ ^[0-9]+$ ]] || die 2 "CLUSTER_STOP_TIMEOUT must be a number of seconds, got '$STOP_TIMEOUT'"
NAMES=(haproxy relay-1 relay-2 relay-3 redis)
# The address HAProxy connects to the nodes from, the one they trust. Linux
# routes all of 127.0.0.0/8 to the loopback interface.
PROXY_SOURCE=127.0.0.2

# Reads the ports from the environment (for `up`) and checks them.
load_ports_from_env() {
  CLUSTER_PORT=${CLUSTER_PORT:-8765}
  CLUSTER_REDIS_PORT=${CLUSTER_REDIS_PORT:-16379}
  CLUSTER_STATS_PORT=${CLUSTER_STATS_PORT:-18760}
  local node_ports=${CLUSTER_NODE_PORTS:-18761 18762 18763}
  read -r -a NODE_PORTS <<<"${node_ports//,/ }"
  if [ ${#NODE_PORTS[@]} -ne 3 ]; then
    die 2 "CLUSTER_NODE_PORTS must list exactly 3 ports (deploy/haproxy.cfg has three nodes), got: '$node_ports'"
  fi
  local all=("$CLUSTER_PORT" "${NODE_PORTS[@]}" "$CLUSTER_REDIS_PORT" "$CLUSTER_STATS_PORT")
  local port
  for port in "${all[@]}"; do
    if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
      die 2 "not a port number: '$port'"
    fi
  done
  if [ "$(printf '%s\n' "${all[@]}" | sort -u | wc -l)" -ne ${#all[@]} ]; then
    die 2 "the ports must all differ: ${all[*]}"
  fi
}

# Reads the ports recorded by `up`; returns 1 if there are none.
load_ports_from_state() {
  local env_file=$CLUSTER_DIR/cluster.env
  [ -f "$env_file" ] || return 1
  # Written by save_state below: plain assignments of numbers.
  # shellcheck source=/dev/null
  . "$env_file"
  read -r -a NODE_PORTS <<<"$CLUSTER_NODE_PORTS"
}

save_state() { # BIN: the relay binary the nodes run
  {
    printf 'CLUSTER_PORT=%q\n' "$CLUSTER_PORT"
    printf 'CLUSTER_NODE_PORTS=%q\n' "${NODE_PORTS[*]}"
    printf 'CLUSTER_REDIS_PORT=%q\n' "$CLUSTER_REDIS_PORT"
    printf 'CLUSTER_STATS_PORT=%q\n' "$CLUSTER_STATS_PORT"
    printf 'CLUSTER_RELAY_BIN=%q\n' "$1"
  } >"$CLUSTER_DIR/cluster.env"
  # The nodes' LOBBY_RELAY_* environment, for `restart`.
  local var
  {
    printf 'LOBBY_RELAY_DRAIN_DELAY=%q\n' "${LOBBY_RELAY_DRAIN_DELAY:-2s}"
    for var in $(compgen -e); do
      case $var in
        LOBBY_RELAY_BIN | LOBBY_RELAY_DRAIN_DELAY) ;;
        LOBBY_RELAY_*) printf '%s=%q\n' "$var" "${!var}" ;;
      esac
    done
  } >"$CLUSTER_DIR/relay.env"
  chmod 600 "$CLUSTER_DIR/relay.env" # it may hold secrets (LOBBY_RELAY_LOBBY_SECRET)
}

node_port() { # relay-N -> its port
  printf '%s\n' "${NODE_PORTS[${1#relay-} - 1]}"
}

# --- processes -----------------------------------------------------------------

pid_file() { printf '%s/%s.pid\n' "$CLUSTER_DIR" "$1"; }

recorded_pid() { # prints the pid recorded for NAME, if any
  local file
  file=$(pid_file "$1")
  [ -f "$file" ] || return 1
  local pid
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  printf '%s\n' "$pid"
}

# What the command line of NAME's process contains, so that a pid reused by
# another process after ours died is never signalled.
signature() {
  case $1 in
    redis) printf 'redis-server\n' ;;
    haproxy) printf 'haproxy\n' ;;
    relay-*) printf -- '--node-id %s\n' "$1" ;;
  esac
}

command_line() { # PID -> its command line, arguments separated by spaces
  if [ -r "/proc/$1/cmdline" ]; then
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  elif command -v ps >/dev/null 2>&1; then
    ps -p "$1" -o args= 2>/dev/null || true
  else
    printf '?\n' # cannot tell: trust the pid
  fi
}

# Whether NAME's recorded process is running (and is still NAME).
running_pid() {
  local name=$1 pid cmdline
  pid=$(recorded_pid "$name") || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmdline=$(command_line "$pid")
  if [ "$cmdline" != "?" ]; then
    # A zombie (exited, parent not yet reaped) has an empty command line.
    case " $cmdline " in
      *"$(signature "$name")"*) ;;
      *) return 1 ;;
    esac
  fi
  printf '%s\n' "$pid"
}

# Starts a command in the background in a session of its own (so that no
# terminal signal reaches it), output appended to LOG, and records its pid.
spawn() {
  local name=$1 log=$2
  shift 2
  local file
  file=$(pid_file "$name")
  rm -f "$file"
  local detach=()
  if command -v setsid >/dev/null 2>&1; then detach=(setsid); fi
  # The inner shell records its own pid and then becomes the program (exec
  # keeps the pid), so the pid file holds the program's pid whatever setsid
  # does.
  # shellcheck disable=SC2016 # expanded by the inner shell
  ${detach[@]+"${detach[@]}"} bash -c 'echo $$ >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' \
    "$file" "$@" </dev/null >>"$log" 2>&1 &
  local deadline=$((SECONDS + 5))
  until [ -s "$file" ]; do
    [ $SECONDS -lt $deadline ] || die 1 "$name did not start (no pid file after 5 s); see $log"
    sleep 0.05
  done
}

# SIGTERM to every running NAME given, then SIGKILL to those still running
# after STOP_TIMEOUT seconds; removes their pid files.
stop() {
  local name pid pids=() stopping=()
  for name in "$@"; do
    if pid=$(running_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      stopping+=("$name")
    fi
  done
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping ${stopping[*]}"
    local deadline=$((SECONDS + STOP_TIMEOUT)) left
    while :; do
      left=()
      for name in "${stopping[@]}"; do
        if running_pid "$name" >/dev/null; then left+=("$name"); fi
      done
      [ ${#left[@]} -eq 0 ] && break
      if [ $SECONDS -ge $deadline ]; then
        warn "still running after ${STOP_TIMEOUT}s, killing: ${left[*]}"
        for name in "${left[@]}"; do
          if pid=$(running_pid "$name"); then kill -KILL "$pid" 2>/dev/null || true; fi
        done
        sleep 0.2
        break
      fi
      sleep 0.1
    done
  fi
  for name in "$@"; do rm -f "$(pid_file "$name")"; done
}

# --- probes ----------------------------------------------------------------------

# Whether something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# GET http://127.0.0.1:PORT/PATH: prints the status code on the first line,
# then the body; returns 1 if there is no HTTP answer within 2 s. Uses curl
# when it is there, else bash's /dev/tcp.
http_get() {
  local port=$1 path=$2
  if command -v curl >/dev/null 2>&1; then
    local out code
    # Without --fail, curl succeeds on any HTTP status (503 included) and
    # fails only when nothing answered.
    out=$(curl -sS --max-time 2 -w '\n%{http_code}' "http://127.0.0.1:$port$path" 2>/dev/null) || return 1
    code=${out##*$'\n'}
    [ "$code" != 000 ] || return 1
    printf '%s\n%s\n' "$code" "${out%$'\n'*}"
  else
    (
      exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
      printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
      line=""
      IFS= read -r -t 2 line <&3 || exit 1
      line=${line%$'\r'}
      status=${line#* }
      printf '%s\n' "${status%% *}"
      # Headers up to the empty line, then the body as it comes, decoded
      # when it is chunked (HAProxy's stats page is, even to HTTP/1.0).
      local chunked=0
      while IFS= read -r -t 2 line <&3; do
        line=${line%$'\r'}
        [ -n "$line" ] || break
        case ${line,,} in transfer-encoding:*chunked*) chunked=1 ;; esac
      done
      if [ $chunked -eq 1 ]; then
        local LC_ALL=C size data
        while IFS= read -r -t 2 size <&3; do
          size=${size%$'\r'}
          size=${size%%;*}
          [[ $size =~ ^[0-9a-fA-F]+$ ]] || break
          [ $((16#$size)) -gt 0 ] || break
          IFS= read -r -t 2 -N $((16#$size)) data <&3 || break
          printf '%s' "$data"
          IFS= read -r -t 2 line <&3 || break # the CRLF after the chunk
        done
      else
        while IFS= read -r -t 2 line <&3 || [ -n "$line" ]; do
          printf '%s\n' "$line"
          line=""
        done
      fi
    ) 2>/dev/null
  fi
}

# "STATUS BODY" of GET /readyz on one line, or "no answer".
readyz() {
  local answer
  if answer=$(http_get "$1" /readyz); then
    printf '%s\n' "$answer" | tr '\n' ' ' | sed 's/ *$//'
    printf '\n'
  else
    printf 'no answer\n'
  fi
}

node_ready() { # relay-N: whether its /readyz answers 200
  local answer
  answer=$(http_get "$(node_port "$1")" /readyz) || return 1
  [ "${answer%%$'\n'*}" = 200 ]
}

redis_cli() { redis-cli -h 127.0.0.1 -p "$CLUSTER_REDIS_PORT" "$@"; }

show_log() { # the last lines of a log, for failure messages
  if [ -s "$1" ]; then
    warn "last lines of $1:"
    tail -n 15 "$1" | sed 's/^/    /' >&2
  fi
}

# --- up ---------------------------------------------------------------------------

# Installs redis-server, redis-cli and haproxy when one is missing and we may
# (root or passwordless sudo, apt-get); otherwise explains and exits 3.
ensure_programs() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  [ ${#missing[@]} -eq 0 ] && return 0
  local how="sudo apt-get install -y redis-server redis-tools haproxy"
  if ! command -v apt-get >/dev/null 2>&1; then
    die 3 "missing: ${missing[*]}, and apt-get is not available. Install Redis (redis-server, redis-cli) and HAProxy (2.6 or newer) so that they are on PATH, e.g. on macOS: brew install redis haproxy"
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      die 3 "missing: ${missing[*]}. Install them with: $how"
    fi
  fi
  say "installing ${missing[*]} (apt-get)"
  ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
    die 3 "apt-get update failed. Install the packages with: $how"
  ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    redis-server redis-tools haproxy >/dev/null ||
    die 3 "apt-get install failed. Install the packages with: $how"
  local program
  for program in redis-server redis-cli haproxy; do
    command -v "$program" >/dev/null 2>&1 || die 3 "$program is still not on PATH after installing"
  done
}

# Prints the path of the relay binary: LOBBY_RELAY_BIN, or a fresh release build.
relay_binary() {
  if [ -n "${LOBBY_RELAY_BIN:-}" ]; then
    [ -x "$LOBBY_RELAY_BIN" ] || die 3 "LOBBY_RELAY_BIN is not an executable file: $LOBBY_RELAY_BIN"
    absolute "$LOBBY_RELAY_BIN"
    return
  fi
  command -v cargo >/dev/null 2>&1 ||
    die 3 "cargo is not on PATH: install Rust (https://rustup.rs) or set LOBBY_RELAY_BIN to a lobby-relay binary"
  say "building the release binary (cargo build --release)" >&2
  (cd "$ROOT" && cargo build --release >&2) || die 3 "cargo build --release failed"
  local target_dir
  target_dir=$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  [ -n "$target_dir" ] || target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
  [ -x "$target_dir/release/lobby-relay" ] || die 3 "no binary at $target_dir/release/lobby-relay after the build"
  printf '%s\n' "$target_dir/release/lobby-relay"
}

# Waits up to SECONDS for a command to succeed while NAME's process runs.
wait_for() {
  local name=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if ! running_pid "$name" >/dev/null; then
      show_log "$CLUSTER_DIR/$name.log"
      die 1 "$name exited during startup"
    fi
    if [ $SECONDS -ge $deadline ]; then
      show_log "$CLUSTER_DIR/$name.log"
      die 1 "$name: not ready after ${seconds}s"
    fi
    sleep 0.1
  done
}

redis_pings() { [ "$(redis_cli ping 2>/dev/null)" = PONG ]; }

# The EXIT trap of `up` until everything runs: stops what was started.
on_up_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$UP_DONE" -eq 0 ]; then
    warn "startup failed: stopping what was started (logs stay in $CLUSTER_DIR)"
    stop "${NAMES[@]}" >&2
    rm -f "$CLUSTER_DIR/cluster.env" "$CLUSTER_DIR/relay.env"
  fi
  exit "$rc"
}

cmd_up() {
  load_ports_from_env
  mkdir -p "$CLUSTER_DIR"
  local name pid
  for name in "${NAMES[@]}"; do
    if pid=$(running_pid "$name"); then
      die 4 "a cluster is already up in $CLUSTER_DIR ($name is running, pid $pid): run '$0 down' first, or choose another CLUSTER_DIR"
    fi
  done
  rm -f "$CLUSTER_DIR"/*.pid # stale: their processes are gone

  local port
  for port in "$CLUSTER_PORT" "${NODE_PORTS[@]}" "$CLUSTER_REDIS_PORT" "$CLUSTER_STATS_PORT"; do
    if port_open "$port"; then
      die 4 "port $port is already in use on 127.0.0.1: choose other ports (CLUSTER_PORT, CLUSTER_NODE_PORTS, CLUSTER_REDIS_PORT, CLUSTER_STATS_PORT)"
    fi
  done

  ensure_programs
  local bin
  bin=$(relay_binary)

  # From here on, a failure (or Ctrl-C) stops whatever was started.
  UP_DONE=0
  trap on_up_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  save_state "$bin"

  say "starting redis-server on 127.0.0.1:$CLUSTER_REDIS_PORT"
  : >"$CLUSTER_DIR/redis.log"
  spawn redis "$CLUSTER_DIR/redis.log" \
    redis-server --port "$CLUSTER_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$CLUSTER_DIR" --daemonize no --logfile ""
  wait_for redis 10 redis_pings

  local n
  for n in 1 2 3; do
    : >"$CLUSTER_DIR/relay-$n.log"
    start_node "relay-$n" "$bin"
  done
  for n in 1 2 3; do
    wait_for "relay-$n" 10 port_open "$(node_port "relay-$n")"
  done

  say "starting haproxy on 127.0.0.1:$CLUSTER_PORT"
  : >"$CLUSTER_DIR/haproxy.log"
  LR_HAPROXY_BIND=127.0.0.1:$CLUSTER_PORT \
    LR_NODE1=127.0.0.1:${NODE_PORTS[0]} \
    LR_NODE2=127.0.0.1:${NODE_PORTS[1]} \
    LR_NODE3=127.0.0.1:${NODE_PORTS[2]} \
    LR_HAPROXY_STATS_BIND=127.0.0.1:$CLUSTER_STATS_PORT \
    LR_HAPROXY_SOURCE=$PROXY_SOURCE \
    spawn haproxy "$CLUSTER_DIR/haproxy.log" haproxy -db -f "$ROOT/deploy/haproxy.cfg"
  wait_for haproxy 10 port_open "$CLUSTER_PORT"

  # Every node should be ready within seconds; one is enough to serve.
  local deadline=$((SECONDS + 20)) ready=() not_ready=()
  while :; do
    ready=()
    not_ready=()
    for n in 1 2 3; do
      if node_ready "relay-$n"; then ready+=("relay-$n"); else not_ready+=("relay-$n"); fi
    done
    [ ${#not_ready[@]} -eq 0 ] && break
    [ $SECONDS -ge $deadline ] && break
    for name in haproxy redis; do
      running_pid "$name" >/dev/null || {
        show_log "$CLUSTER_DIR/$name.log"
        die 1 "$name exited during startup"
      }
    done
    sleep 0.2
  done
  if [ ${#ready[@]} -eq 0 ]; then
    for name in "${not_ready[@]}"; do
      warn "$name /readyz: $(readyz "$(node_port "$name")")"
      show_log "$CLUSTER_DIR/$name.log"
    done
    die 1 "no node answered 200 on /readyz within 20 s"
  fi
  for name in "${not_ready[@]}"; do
    warn "warning: $name is not ready (/readyz: $(readyz "$(node_port "$name")")); see $CLUSTER_DIR/$name.log"
  done
  UP_DONE=1
  trap - EXIT INT TERM

  say ""
  say "cluster up (state and logs in $CLUSTER_DIR)"
  say "  players:  ws://127.0.0.1:$CLUSTER_PORT/   (HAProxy: leastconn over the ready nodes)"
  for n in 1 2 3; do
    say "  relay-$n:  ws://127.0.0.1:$(node_port "relay-$n")/  (health: http://127.0.0.1:$(node_port "relay-$n")/readyz)"
  done
  say "  stats:    http://127.0.0.1:$CLUSTER_STATS_PORT/   (Prometheus: /metrics)"
  say "  redis:    redis-cli -p $CLUSTER_REDIS_PORT"
  say "  status:   $0 status      stop: $0 down"
}

# Starts relay-N with BIN (the environment as it is: `up`'s, or relay.env's
# for `restart`); its log is appended to.
start_node() {
  local name=$1 bin=$2 port
  port=$(node_port "$name")
  say "starting $name on 127.0.0.1:$port"
  # HAProxy connects from PROXY_SOURCE with a PROXY protocol header (the
  # player's address); anything else from the loopback, like the
  # readiness checks here, is an ordinary client.
  LOBBY_RELAY_DRAIN_DELAY=${LOBBY_RELAY_DRAIN_DELAY:-2s} \
    spawn "$name" "$CLUSTER_DIR/$name.log" \
    "$bin" serve --listen "127.0.0.1:$port" --node-id "$name" \
    --redis-url "redis://127.0.0.1:$CLUSTER_REDIS_PORT/" --log-format json \
    --trusted-proxies "$PROXY_SOURCE" --proxy-protocol
}

cmd_restart() {
  local name=$1
  case $name in
    relay-1 | relay-2 | relay-3) ;;
    *) die 2 "restart: expected relay-1, relay-2 or relay-3, got '$name'" ;;
  esac
  load_ports_from_state || die 5 "no cluster in $CLUSTER_DIR (no cluster.env: run '$0 up' first)"
  local bin=${CLUSTER_RELAY_BIN:-}
  [ -n "$bin" ] && [ -x "$bin" ] ||
    die 5 "$CLUSTER_DIR/cluster.env names no relay binary (a cluster started by an older $PROG?): run '$0 down' and '$0 up'"
  [ -f "$CLUSTER_DIR/relay.env" ] || die 5 "no $CLUSTER_DIR/relay.env: run '$0 down' and '$0 up'"
  stop "$name"
  # The nodes' environment as `up` recorded it, not the caller's.
  local var
  for var in $(compgen -e); do
    case $var in LOBBY_RELAY_*) unset "$var" ;; esac
  done
  set -a
  # shellcheck source=/dev/null
  . "$CLUSTER_DIR/relay.env"
  set +a
  start_node "$name" "$bin"
  local deadline=$((SECONDS + 20))
  until node_ready "$name"; do
    if ! running_pid "$name" >/dev/null; then
      show_log "$CLUSTER_DIR/$name.log"
      die 1 "$name exited during startup"
    fi
    if [ $SECONDS -ge $deadline ]; then
      warn "$name /readyz: $(readyz "$(node_port "$name")")"
      show_log "$CLUSTER_DIR/$name.log"
      die 1 "$name: not ready after 20 s"
    fi
    sleep 0.1
  done
  say "$name ready (pid $(recorded_pid "$name")): ws://127.0.0.1:$(node_port "$name")/"
}

# --- down, status ------------------------------------------------------------------

cmd_down() {
  if [ ! -d "$CLUSTER_DIR" ]; then
    say "nothing to stop: $CLUSTER_DIR does not exist"
    return 0
  fi
  # The balancer and the nodes first, Redis last, so that the nodes can say
  # goodbye in Redis as they go.
  stop haproxy relay-1 relay-2 relay-3
  stop redis
  rm -f "$CLUSTER_DIR/cluster.env" "$CLUSTER_DIR/relay.env"
  local name pid
  for name in "${NAMES[@]}"; do
    if pid=$(running_pid "$name"); then die 1 "$name (pid $pid) is still running"; fi
  done
  say "cluster down (logs stay in $CLUSTER_DIR)"
}

cmd_status() {
  if ! load_ports_from_state; then
    local name any=0
    for name in "${NAMES[@]}"; do
      [ -f "$(pid_file "$name")" ] && any=1
    done
    if [ $any -eq 0 ]; then
      say "no cluster in $CLUSTER_DIR"
      return 5
    fi
    load_ports_from_env # pid files without cluster.env: assume the defaults
  fi
  local healthy=1 name pid answer n address
  say "cluster in $CLUSTER_DIR"
  for name in "${NAMES[@]}"; do
    case $name in
      haproxy) address="ws://127.0.0.1:$CLUSTER_PORT/  stats http://127.0.0.1:$CLUSTER_STATS_PORT/" ;;
      redis) address="redis://127.0.0.1:$CLUSTER_REDIS_PORT/" ;;
      *) address="ws://127.0.0.1:$(node_port "$name")/" ;;
    esac
    if pid=$(running_pid "$name"); then
      printf '  %-8s running (pid %s)  %s\n' "$name" "$pid" "$address"
    else
      printf '  %-8s STOPPED  %s\n' "$name" "$address"
      healthy=0
    fi
  done
  say "readiness (GET /readyz on each node):"
  for n in 1 2 3; do
    answer=$(readyz "$(node_port "relay-$n")")
    printf '  relay-%s  %s\n' "$n" "$answer"
    [ "${answer%% *}" = 200 ] || healthy=0
  done
  # HAProxy's view, from its stats page as CSV: proxy,server,...,status (18th).
  local csv
  if csv=$(http_get "$CLUSTER_STATS_PORT" '/;csv'); then
    say "haproxy's view (backend relays):"
    printf '%s\n' "$csv" | awk -F, '$1 == "relays" && $2 ~ /^relay-/ {
      printf "  %-8s %-6s %s open connections\n", $2, $18, $5 }'
  fi
  if command -v redis-cli >/dev/null 2>&1 && redis_pings; then
    local nodes lobbies
    nodes=$(redis_cli --scan --pattern 'lr:{nodes}:node:*' | sort)
    lobbies=$(redis_cli --scan --pattern 'lr:lobby:*' | wc -l | tr -d ' ')
    say "redis (redis-cli -p $CLUSTER_REDIS_PORT):"
    say "  live nodes: $(printf '%s' "$nodes" | grep -c . || true)"
    if [ -n "$nodes" ]; then printf '%s\n' "$nodes" | sed 's/^/    /'; fi
    say "  lobbies:    $lobbies"
  else
    say "redis: not answering on 127.0.0.1:$CLUSTER_REDIS_PORT"
    healthy=0
  fi
  [ $healthy -eq 1 ] || return 1
}

# --- main --------------------------------------------------------------------------

case ${1:-} in
  up) cmd=cmd_up ;;
  down) cmd=cmd_down ;;
  status) cmd=cmd_status ;;
  restart)
    if [ $# -ne 2 ]; then
      warn "restart takes one argument, the node: relay-1, relay-2 or relay-3 (see --help)"
      exit 2
    fi
    cmd_restart "$2"
    exit
    ;;
  -h | --help | help)
    usage
    exit 0
    ;;
  "")
    usage >&2
    exit 2
    ;;
  *)
    warn "unknown command: $1 (expected up, down, status or restart; see --help)"
    exit 2
    ;;
esac
if [ $# -gt 1 ]; then
  warn "$1 takes no arguments (configuration comes from the environment; see --help)"
  exit 2
fi
"$cmd"
