#!/usr/bin/env bash
# End-to-end test of docker-compose.yml, with no container registry needed.
#
# Usage: scripts/compose-e2e.sh            (no arguments; see the variables below)
#
# Without a Docker engine it prints "compose e2e skipped: no Docker engine"
# and exits 0. Otherwise:
#   1-2. runs README's command for a machine without a registry,
#      `scripts/compose-local.sh up` (its images and steps are in
#      scripts/compose-lib.sh; nothing is pulled), as project lre2e<pid>,
#      with images of this run alone: lobby-relay-test-redis:e2e-<pid>,
#      lobby-relay-test-haproxy:e2e-<pid> (stand-ins for the public Redis and
#      HAProxy images) and lobby-relay-test-relay:e2e-<pid> (the Dockerfile's
#      `runtime-prebuilt` target around a binary built on this machine), all
#      on lobby-relay-test-base:SUITE (Debian made by mmdebstrap; built once,
#      then reused); HAProxy's ports on free 127.0.0.1 ports and a free /24
#      network. compose-local.sh brings the unchanged docker-compose.yml up
#      (`up -d --no-build`) and waits until every service is healthy and
#      HAProxy sees the three nodes up;
#   3. checks the browser pages through HAProxy's published port: GET / and
#      /playground answer 200 with the playground page; with the admin token
#      set for the stack (LOBBY_RELAY_ADMIN_TOKEN, a random one), /admin
#      serves the admin page, /admin/api/cluster answers 401 without the
#      token (or with a wrong one) and, with it, lists relay-1..3 alive;
#      then plays through the same port (Python, websockets): two
#      players join, get ready and exchange text, binary and ping messages;
#      they sit on two different relay containers, as `redis-cli HGETALL`
#      in the redis container shows, and `lobby-relay inspect` in a relay
#      container agrees; while both sit, README's recipes run as written
#      (below) and must show that game; a container on the network that is
#      not HAProxy reaches a node directly (nodes trust HAProxy's address
#      only); each node's /metrics is scraped; the relay container of one
#      player is killed (SIGKILL): the other gets playerLeft within the
#      bound, and a new player takes the seat through HAProxy and plays;
#   4. README's stop command (`docker compose down -v`, taken from README),
#      and checks that no container, network or volume (Redis's anonymous
#      one) of the project remains;
#   5. a second `compose-local.sh up --monitoring`, this time with
#      LOBBY_RELAY_ADMIN_TOKEN unset (the nodes must have no such variable
#      at all, the playground still answers, /admin and /admin/api/cluster
#      answer 404) and with the `monitoring` profile: its Prometheus
#      (lobby-relay-test-prometheus:e2e-<pid>, on
#      lobby-relay-test-monitoring-base:SUITE, Debian's prometheus) on a free
#      127.0.0.1 port; a short game; then, through Prometheus's HTTP API:
#      /api/v1/targets has the three nodes of job lobby-relay, all "up"
#      (within 60 s: it scrapes every 15 s), /api/v1/rules has the group
#      lobby-relay with every alert of deploy/prometheus/alerts.yml, and
#      `lobby_relay_connections` has a series per node; then
#      `compose-local.sh down`, with the same check as in 4 (Prometheus's
#      container included);
#   6. removes the images of this run (and with them the layers their builds
#      made, unless another image shares them), and checks that none of
#      those layers is left dangling.
# On any failure, or Ctrl-C, it shows the services' state and last log lines,
# takes the project down and removes the run's images.
#
# README's recipes: the commands are read from README.md itself, so that they
# cannot drift apart: every line of the code block after "Watching it:" (six),
# the "a node's metrics" row's first command and the "stop" row's first
# command, in the "Docker compose" section. A different number of them fails
# the test (each has its own check here). Each runs with `bash -o pipefail
# -c` in the checkout, stdin not a terminal (</dev/null, as in a script),
# with COMPOSE_PROJECT_NAME and COMPOSE_FILE set to the run's stack and three
# substitutions: `docker compose` becomes the compose command in use (README
# names Debian's docker-compose as its equivalent), 127.0.0.1:8404 the run's
# stats port and jump-rocket the run's passphrase. Each must exit 0 and print
# what the recipe promises, checked against the game being played.
#
# Environment:
#   COMPOSE                  the compose command, e.g. "docker-compose" [docker
#                            compose if it works, else docker-compose]
#   LOBBY_RELAY_BIN          a lobby-relay binary to put in the image instead
#                            of building one (must run on the base's glibc)
#   LOBBY_RELAY_TEST_SUITE   the Debian release of the base image [this
#                            machine's, if it is Debian; else bookworm];
#                            LOBBY_RELAY_LOCAL_SUITE works too
#   LOBBY_RELAY_SKIP_COMPOSE_E2E=1   skip, saying so
#   CARGO_TARGET_DIR         as for cargo
# Python 3 with `websockets` is used as it is, or installed from PyPI into a
# virtualenv in a temporary folder. mmdebstrap is installed with apt-get if
# the base image has to be built and it is missing.
#
# The run's images are removed at its end; two runs on one engine never touch
# each other's. The base images, lobby-relay-test-base:SUITE and
# lobby-relay-test-monitoring-base:SUITE, stay for the next run (each takes
# about a minute to make); remove them with:
#   docker rmi lobby-relay-test-base:bookworm lobby-relay-test-monitoring-base:bookworm
# (Runs before issue 19 tagged their images :e2e; remove those by hand:
#  docker rmi lobby-relay-test-redis:e2e lobby-relay-test-haproxy:e2e lobby-relay-test-relay:e2e)
#
# Exit status: 0 passed or skipped; 1 failed; 130/143 interrupted (cleaned up).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
START=$SECONDS
PROJECT=lre2e$$
# The images of this run: PREFIX-{redis,haproxy,relay,prometheus}:TAG
# (scripts/compose-lib.sh).
PREFIX=lobby-relay-test
TAG=e2e-$$
RUN_IMAGES=("$PREFIX-redis:$TAG" "$PREFIX-haproxy:$TAG" "$PREFIX-relay:$TAG" "$PREFIX-prometheus:$TAG")

CL_NAME=compose-e2e
CL_START=$START
# shellcheck source=scripts/compose-lib.sh
. "$ROOT/scripts/compose-lib.sh"

# --- skip? ------------------------------------------------------------------------
if [ "${LOBBY_RELAY_SKIP_COMPOSE_E2E:-0}" = 1 ]; then
  echo "compose e2e skipped: LOBBY_RELAY_SKIP_COMPOSE_E2E=1"
  exit 0
fi
if ! cl_have_docker; then
  echo "compose e2e skipped: no Docker engine"
  exit 0
fi

cl_find_compose || exit 1
command -v python3 >/dev/null 2>&1 || fail "python3 is needed (install it, e.g. apt-get install python3)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/lobby-relay-compose-e2e.XXXXXX")
CL_TMP=$TMP
PROJECT_UP=0
CONTAINERS_SEEN=()

# With the monitoring profile, so that `down` and `ps` include Prometheus.
compose() {
  timeout 240 "${COMPOSE_CMD[@]}" -f "$ROOT/docker-compose.yml" -p "$PROJECT" --profile monitoring "$@"
}

show_state() {
  say "state of project $PROJECT:"
  compose ps 2>&1 | sed 's/^/    /' >&2 || true
  local service
  for service in redis relay-1 relay-2 relay-3 haproxy prometheus; do
    say "last log lines of $service:"
    compose logs --no-color --tail=25 "$service" 2>&1 | sed 's/^/    /' >&2 || true
  done
}

# Removes this run's images (never another's: the tag is the run's own) and
# checks that the layers their builds made went with them: none may be left
# dangling (one that another image still uses stays, as it must). Returns 1
# if some are left.
remove_run_images() {
  local image id layers=() present=() dangling left=()
  for image in "${RUN_IMAGES[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 || continue
    present+=("$image")
    for id in $(docker history -q --no-trunc "$image" 2>/dev/null); do
      [ "$id" = "<missing>" ] || layers+=("$id")
    done
  done
  [ ${#present[@]} -gt 0 ] || return 0
  docker rmi "${present[@]}" >/dev/null 2>&1 || true
  dangling=" $(docker images -q --no-trunc --filter dangling=true | tr '\n' ' ') "
  for id in ${layers[@]+"${layers[@]}"}; do
    case $dangling in *" $id "*) left+=("$id") ;; esac
  done
  for image in "${present[@]}"; do
    if docker image inspect "$image" >/dev/null 2>&1; then left+=("$image"); fi
  done
  if [ ${#left[@]} -gt 0 ]; then
    say "FAILED: left after docker rmi ${present[*]}: ${left[*]}" >&2
    return 1
  fi
  say "removed ${present[*]} (${#layers[@]} layers checked: none left dangling; $PREFIX-base:${SUITE:-SUITE} and $PREFIX-monitoring-base:${SUITE:-SUITE} stay)"
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$PROJECT_UP" = 1 ]; then
    if [ "$rc" -ne 0 ]; then show_state; fi
    say "cleaning up: $(printf '%s ' "${COMPOSE_CMD[@]}")-p $PROJECT down -v"
    compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  fi
  if ! remove_run_images && [ "$rc" -eq 0 ]; then rc=1; fi
  rm -rf "$TMP"
  if [ "$rc" -eq 0 ]; then
    say "compose e2e passed in $((SECONDS - START)) s"
  else
    say "compose e2e failed (exit $rc) after $((SECONDS - START)) s"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Docker engine $(docker version -f '{{.Server.Version}}' 2>/dev/null), compose: ${COMPOSE_CMD[*]} ($("${COMPOSE_CMD[@]}" version --short 2>/dev/null || echo '?'))"

# --- Python with websockets ------------------------------------------------------------
step "Python client"
PY=python3
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
  say "installing websockets from PyPI into a virtualenv in $TMP"
  if python3 -m venv "$TMP/venv" >/dev/null 2>&1 &&
    "$TMP/venv/bin/python" -m pip install -q --disable-pip-version-check websockets >"$TMP/pip.log" 2>&1; then
    PY=$TMP/venv/bin/python
  elif python3 -m pip install -q --disable-pip-version-check --target "$TMP/pylib" websockets >"$TMP/pip.log" 2>&1; then
    export PYTHONPATH="$TMP/pylib${PYTHONPATH:+:$PYTHONPATH}"
  else
    cat "$TMP/pip.log" >&2 || true
    fail "cannot install the Python package websockets (pip install websockets)"
  fi
fi
say "$("$PY" -c 'import sys, websockets; print("python", sys.version.split()[0], "websockets", websockets.__version__)')"

# --- the relay binary ---------------------------------------------------------------------
# Built once here and handed to every `compose-local.sh up` of the run.
step "relay binary"
cl_relay_binary
if [ -n "${LOBBY_RELAY_TEST_SUITE:-}" ]; then export LOBBY_RELAY_LOCAL_SUITE=$LOBBY_RELAY_TEST_SUITE; fi
cl_suite

# --- the stack's variables ------------------------------------------------------------------
# Three free ports on 127.0.0.1 (HAProxy's two, Prometheus's), and a /24 that
# no Docker network uses (so that a stack already running with the default
# one is no obstacle).
read -r PLAYER_PORT STATS_PORT PROMETHEUS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
# shellcheck disable=SC2046 # one subnet per word
NET=$(python3 - $(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' $(docker network ls -q) 2>/dev/null) <<'EOF'
import ipaddress, os, sys
used = []
for arg in sys.argv[1:]:
    try:
        used.append(ipaddress.ip_network(arg, strict=False))
    except ValueError:
        pass
start = 100 + os.getppid() % 100
for i in range(200):
    third = 56 + (start + i) % 200
    net = ipaddress.ip_network(f"172.28.{third}.0/24")
    if not any(net.overlaps(u) for u in used if u.version == 4):
        print(f"172.28.{third}")
        break
else:
    sys.exit("no free 172.28.x.0/24 network")
EOF
) || fail "no free network for the stack"

# What compose-local.sh exports for its compose (the same names), for ours.
export REDIS_IMAGE=${RUN_IMAGES[0]} HAPROXY_IMAGE=${RUN_IMAGES[1]} RELAY_IMAGE=${RUN_IMAGES[2]}
export PROMETHEUS_IMAGE=${RUN_IMAGES[3]}
export LOBBY_RELAY_PORT=127.0.0.1:$PLAYER_PORT LOBBY_RELAY_STATS_PORT=127.0.0.1:$STATS_PORT LOBBY_RELAY_NET=$NET
export LOBBY_RELAY_PROMETHEUS_PORT=127.0.0.1:$PROMETHEUS_PORT
say "project $PROJECT: players ws://127.0.0.1:$PLAYER_PORT/, stats http://127.0.0.1:$STATS_PORT/, Prometheus (second run) http://127.0.0.1:$PROMETHEUS_PORT/, network $NET.0/24"
say "REDIS_IMAGE=$REDIS_IMAGE RELAY_IMAGE=$RELAY_IMAGE HAPROXY_IMAGE=$HAPROXY_IMAGE PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE"

# --- README's recipes ------------------------------------------------------------------
# Read from README.md itself (see the header), with the substitutions made
# here; the Python side runs and checks them ($TMP/recipes.json), the stop
# command runs in down_and_check. A README without them fails here, at once.
step "README's compose recipes"
PASSPHRASE=lre2e-$$-jump-rocket
python3 - "$ROOT/README.md" "${COMPOSE_CMD[*]}" "$STATS_PORT" "$PASSPHRASE" >"$TMP/recipes.json" <<'PYRECIPES' ||
import json, re, sys

readme, compose, stats_port, passphrase = sys.argv[1:]


def fail(msg):
    sys.exit(f"README.md: {msg}")


text = open(readme, encoding="utf-8").read()
m = re.search(r"^## Docker compose\n(.*?)(?=^## )", text, re.M | re.S)
if not m:
    fail('no section "## Docker compose"')
lines = m.group(1).splitlines()
if "Watching it:" not in lines:
    fail('no line "Watching it:" in the Docker compose section')
i = lines.index("Watching it:")
if lines[i + 1 : i + 2] != ["```sh"]:
    fail('no ```sh block right after "Watching it:"')
watch = []
for line in lines[i + 2 :]:
    if line.startswith("```"):
        break
    if line.strip():
        watch.append(line)
else:
    fail('the block after "Watching it:" does not end')


def row(name):
    rows = [l for l in lines if l.startswith(f"| {name} |")]
    if len(rows) != 1:
        fail(f'{len(rows)} table rows "| {name} |" in the Docker compose section, not one')
    code = re.search(r"`([^`]+)`", rows[0][len(f"| {name} |") :])
    if not code:
        fail(f'no command in the row "| {name} |"')
    return code.group(1)


def recipe(kind, line):
    run = re.sub(r"\bdocker compose\b", compose, line)
    run = run.replace("127.0.0.1:8404", f"127.0.0.1:{stats_port}").replace("jump-rocket", passphrase)
    return {"kind": kind, "readme": line, "run": run}


recipes = [recipe("watch", l) for l in watch]
recipes.append(recipe("metrics", row("a node's metrics")))
recipes.append(recipe("stop", row("stop")))
# compose-e2e.sh has a check for each (e2e.py, readme_recipes): six lines
# after "Watching it:", the metrics row, the stop row. Another number means
# that README changed: change the checks with it.
if len(watch) != 6:
    fail(f'{len(watch)} commands after "Watching it:"; compose-e2e.sh has checks for 6: update them with README')
if recipes[-1]["readme"] != "docker compose down -v":
    fail(f"the stop command is `{recipes[-1]['readme']}`, not `docker compose down -v` (Redis's anonymous volume would stay)")
json.dump(recipes, sys.stdout, indent=1)
PYRECIPES
  fail "README.md's compose recipes are not where this test reads them (see its header)"
RECIPES_FOUND=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$TMP/recipes.json")
[ "$RECIPES_FOUND" -eq 8 ] || fail "$RECIPES_FOUND recipes read from README.md, not 8"
STOP_RECIPE=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[-1]["run"])' "$TMP/recipes.json")
say "$RECIPES_FOUND recipes read from README.md (the stop command runs as: $STOP_RECIPE)"

# Records the project's containers and their volumes (an image's VOLUME makes
# an anonymous one), for the leftover check after `down`.
remember_project() {
  local cid
  for cid in $(docker ps -aq --no-trunc --filter "label=com.docker.compose.project=$PROJECT"); do
    case " ${CONTAINERS_SEEN[*]-} " in
      *" $cid "*) ;;
      *) CONTAINERS_SEEN+=("$cid") ;;
    esac
  done
}

# Takes the stack down, then checks that nothing of the project is left.
# Usage: down_and_check readme   README's stop command ($STOP_RECIPE)
#        down_and_check local    scripts/compose-local.sh down
down_and_check() {
  local how=$1 t=$SECONDS volumes=() cid vol left
  for cid in "${CONTAINERS_SEEN[@]}"; do
    for vol in $(docker inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' "$cid" 2>/dev/null); do
      volumes+=("$vol")
    done
  done
  if [ "$how" = readme ]; then
    say "README's stop command: $STOP_RECIPE (COMPOSE_PROJECT_NAME=$PROJECT)"
    (cd "$ROOT" && COMPOSE_PROJECT_NAME=$PROJECT COMPOSE_FILE=$ROOT/docker-compose.yml \
      timeout 120 bash -o pipefail -c "$STOP_RECIPE" </dev/null >"$TMP/down.log" 2>&1) || {
      sed 's/^/    /' "$TMP/down.log" >&2
      fail "README's stop command failed: $STOP_RECIPE"
    }
  else
    say "scripts/compose-local.sh down (COMPOSE_PROJECT_NAME=$PROJECT)"
    compose_local down </dev/null >"$TMP/down.log" 2>&1 || {
      sed 's/^/    /' "$TMP/down.log" >&2
      fail "scripts/compose-local.sh down failed"
    }
  fi
  PROJECT_UP=0
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
  [ -z "$left" ] || fail "containers left after down: $left"
  for cid in "${CONTAINERS_SEEN[@]}"; do
    if docker inspect "$cid" >/dev/null 2>&1; then fail "container $cid left after down"; fi
  done
  left=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
  [ -z "$left" ] || fail "networks left after down: $left"
  if docker network inspect "${PROJECT}_default" >/dev/null 2>&1; then fail "network ${PROJECT}_default left after down"; fi
  left=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
  [ -z "$left" ] || fail "volumes left after down: $left"
  for vol in ${volumes[@]+"${volumes[@]}"}; do
    if docker volume inspect "$vol" >/dev/null 2>&1; then fail "volume $vol left after down"; fi
  done
  say "down in $((SECONDS - t)) s: no container (of ${#CONTAINERS_SEEN[@]}), network or volume (of ${#volumes[@]}) of $PROJECT left"
  CONTAINERS_SEEN=()
}

# README's command for a machine without a registry, on this run's project,
# images (tag e2e-<pid>), binary, ports and network.
compose_local() {
  COMPOSE_PROJECT_NAME=$PROJECT COMPOSE_FILE=$ROOT/docker-compose.yml \
    LOBBY_RELAY_LOCAL_PREFIX=$PREFIX LOBBY_RELAY_LOCAL_TAG=$TAG LOBBY_RELAY_BIN=$BIN \
    LOBBY_RELAY_LOCAL_SUITE=$SUITE COMPOSE="${COMPOSE_CMD[*]}" \
    timeout 600 "$ROOT/scripts/compose-local.sh" "$@"
}

# Usage: up [--monitoring]
up() {
  local t=$SECONDS
  say "scripts/compose-local.sh up${*:+ $*} (COMPOSE_PROJECT_NAME=$PROJECT LOBBY_RELAY_LOCAL_TAG=$TAG)"
  PROJECT_UP=1
  compose_local up "$@" </dev/null >"$TMP/up.log" 2>&1 || {
    sed 's/^/    /' "$TMP/up.log" >&2
    fail "scripts/compose-local.sh up $* failed"
  }
  grep -E '\] (built|using|healthy|Prometheus ready|.* reused)|^  (players|HAProxy stats|Prometheus):' "$TMP/up.log" | sed 's/^/    /' || true
  remember_project
  say "up and healthy in $((SECONDS - t)) s"
}

# The Python side of the test: the players, and the checks that need them.
cat >"$TMP/e2e.py" <<'PYTHON'
import asyncio, hashlib, json, os, re, subprocess, sys, time, urllib.error, urllib.request

try:
    from websockets.asyncio.client import connect  # websockets >= 13
except ImportError:
    from websockets import connect
from websockets.exceptions import ConnectionClosed

COMPOSE = json.loads(os.environ["E2E_COMPOSE"])
URL = os.environ["E2E_URL"]
HTTP_URL = os.environ["E2E_HTTP_URL"]  # HAProxy's published port, plain HTTP
ADMIN_TOKEN = os.environ.get("E2E_ADMIN_TOKEN") or None  # the stack's LOBBY_RELAY_ADMIN_TOKEN
# The pages' titles (src/web/playground.html, src/web/admin.html).
PLAYGROUND_MARKER = "<title>lobby-relay playground</title>"
ADMIN_MARKER = "<title>lobby-relay cluster</title>"
MODE = sys.argv[1]
START = time.monotonic()
NODES = ("relay-1", "relay-2", "relay-3")
# docs/operations.md: playerLeft at most about node-timeout + node-timeout/3
# (3 s + 1 s) after the dead node's last heartbeat; its last heartbeat may be
# up to a second before the kill. 6 s leaves room for a loaded machine.
PLAYER_LEFT_BOUND = 6.0


def say(msg):
    print(f"[compose-e2e py {time.monotonic() - START:5.1f}s] {msg}", flush=True)


class Failed(Exception):
    pass


def check(ok, msg):
    if not ok:
        raise Failed(msg)


def run(args, timeout=30, input=None):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
    if p.returncode != 0:
        raise Failed(f"{' '.join(args)} exited {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def compose(*args, **kw):
    return run(COMPOSE + list(args), **kw)


class Player:
    def __init__(self, name):
        self.name = name

    async def open(self):
        # No client pings: like a browser, the player learns of trouble only
        # from the server or a closed connection. The open timeout leaves
        # room for HAProxy's retries (3 x `timeout connect` 2 s) when it
        # sends a connection to a node that died and is not yet marked down.
        self.ws = await connect(URL, open_timeout=15, ping_interval=None, max_size=2**20)
        return self

    async def send(self, msg):
        await self.ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))

    async def raw(self, timeout=5):
        try:
            return await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            raise Failed(f"{self.name}: nothing received within {timeout} s")

    async def recv(self, timeout=5):
        m = await self.raw(timeout)
        check(isinstance(m, str), f"{self.name}: expected a text message, got {m!r}")
        return json.loads(m)

    async def expect(self, want, timeout=5):
        got = await self.recv(timeout)
        check(got == want, f"{self.name}: expected {want}, got {got}")
        return got

    async def close(self):
        await self.ws.close()


def lobby_hash(passphrase):
    # The passphrase normalised (trimmed, lower-case), then SHA-256.
    return hashlib.sha256(passphrase.strip().lower().encode()).hexdigest()


def seats_in_redis(h):
    out = compose("exec", "-T", "redis", "redis-cli", "HGETALL", f"lr:lobby:{{{h}}}")
    lines = [l for l in out.splitlines() if l.strip()]
    check(len(lines) % 2 == 0, f"odd HGETALL output: {out!r}")
    return {int(lines[i]): lines[i + 1] for i in range(0, len(lines), 2)}


def seats_from_inspect(node, passphrase, h):
    out = compose("exec", "-T", node, "lobby-relay", "inspect", passphrase)
    check(f"lobby:   {h}" in out, f"inspect in {node} names another lobby: {out!r}")
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^seat (\d+): (\S+)(?: \([^)]*\))*$", out, re.M)}, out


def node_key(member):  # relay-2/1f2e3d4c.7 -> relay-2/1f2e3d4c
    return member.rsplit(".", 1)[0]


def node_id(member):
    return member.split("/", 1)[0]


def where(passphrase, h, via):
    """Seats from redis-cli, checked against `lobby-relay inspect` run in `via`."""
    seats = seats_in_redis(h)
    say(f"redis-cli HGETALL 'lr:lobby:{{{h[:12]}...}}' -> {seats}")
    inspected, out = seats_from_inspect(via, passphrase, h)
    for line in out.strip().splitlines():
        say(f"  {via}$ lobby-relay inspect ... | {line}")
    check(inspected == seats, f"inspect ({inspected}) disagrees with redis-cli ({seats})")
    say(f"lobby-relay inspect (in {via}) agrees with redis-cli")
    return seats


def haproxy_status():
    """server -> status (UP, DOWN, ...) of the relays backend, from HAProxy's stats page."""
    with urllib.request.urlopen(os.environ["E2E_STATS_URL"] + ";csv", timeout=5) as r:
        rows = [line.split(",") for line in r.read().decode().splitlines()]
    return {row[1]: row[17] for row in rows if row[0] == "relays" and row[1].startswith("relay-")}


def metrics(node):
    out = compose("exec", "-T", node, "curl", "-s", "-o", "-", "-w", "\n%{http_code}",
                  "http://127.0.0.1:8765/metrics")
    body, _, code = out.rpartition("\n")
    return code.strip(), body


def counter(body, name):
    """The sum of a metric's samples; `name` may carry its labels."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + " ") or ("{" not in name and line.startswith(name + "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def http_get(path, token=None):
    """(status, content type, body) of a plain GET through HAProxy."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(HTTP_URL + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode(errors="replace")


def check_pages():
    """The playground, and the admin view as the stack's token says, through HAProxy."""
    for path in ("/", "/playground"):
        code, ctype, body = http_get(path)
        check(code == 200, f"GET {path} through HAProxy answered {code}: {body[:200]!r}")
        check(ctype.startswith("text/html"), f"GET {path}: Content-Type {ctype!r}")
        check(PLAYGROUND_MARKER in body, f"GET {path}: no {PLAYGROUND_MARKER!r} in {body[:200]!r}")
    say(f"GET / and /playground through HAProxy: 200, the playground page ({len(body)} bytes)")

    if ADMIN_TOKEN is None:
        for path in ("/admin", "/admin/api/cluster"):
            code, _, body = http_get(path)
            check(code == 404, f"GET {path} without an admin token set answered {code}: {body[:200]!r}")
        say("no admin token set: /admin and /admin/api/cluster answer 404")
        return

    code, ctype, body = http_get("/admin")
    check(code == 200 and ADMIN_MARKER in body, f"GET /admin answered {code}: {body[:200]!r}")
    for token, what in ((None, "without the token"), ("x" * 16 + ADMIN_TOKEN, "with a wrong token")):
        code, _, body = http_get("/admin/api/cluster", token)
        check(code == 401, f"GET /admin/api/cluster {what} answered {code}: {body[:200]!r}")
    say("GET /admin: 200, the admin page; /admin/api/cluster: 401 without the token and with a wrong one")
    # Every node registers itself at start and heartbeats every second: all
    # three are listed as soon as they are healthy; allow a few seconds.
    deadline = time.monotonic() + 10
    while True:
        code, ctype, body = http_get("/admin/api/cluster", ADMIN_TOKEN)
        check(code == 200, f"GET /admin/api/cluster with the token answered {code}: {body[:200]!r}")
        check(ctype.startswith("application/json"), f"/admin/api/cluster: Content-Type {ctype!r}")
        view = json.loads(body)
        alive = sorted(n["node"] for n in view["nodes"] if n["alive"])
        if alive == list(NODES):
            break
        check(time.monotonic() < deadline, f"/admin/api/cluster lists {alive} alive, not {list(NODES)}: {body[:400]}")
        time.sleep(0.2)
    check(view["store"] == "redis", f"/admin/api/cluster: store {view['store']!r}")
    check(view["served_by"] in NODES, f"/admin/api/cluster served by {view['served_by']!r}")
    say(f"GET /admin/api/cluster with the token (served by {view['served_by']}): store redis, "
        f"nodes alive {', '.join(alive)}")


def readme_recipes(h, seats):
    """README's compose recipes (read by compose-e2e.sh), run as a script would
    while both players sit, each checked against the game."""
    with open(os.environ["E2E_RECIPES"]) as f:
        recipes = [r for r in json.load(f) if r["kind"] != "stop"]
    env = dict(os.environ, COMPOSE_PROJECT_NAME=os.environ["E2E_PROJECT"],
               COMPOSE_FILE=os.path.join(os.environ["E2E_ROOT"], "docker-compose.yml"))
    nodes_of_seats = {node_id(m) for m in seats.values()}
    lobby_key = f"lr:lobby:{{{h}}}"

    def lines(out):
        return [l.strip() for l in out.splitlines() if l.strip()]

    def check_ps(out):
        for service in ("redis",) + NODES + ("haproxy",):
            row = [l for l in out.splitlines() if re.search(rf"[-_]{service}[-_]1\b", l)]
            check(len(row) == 1 and "(healthy)" in row[0], f"no line of {service}, \"(healthy)\", in {out!r}")
        return "every service (healthy)"

    def check_csv(out):
        rows = {f[1]: f for f in (l.split(",") for l in lines(out)) if len(f) == 4 and f[0] == "relays"}
        for node in NODES:
            check(node in rows and rows[node][3] == "UP", f"{node} not UP in {out!r}")
            want = sum(node_id(m) == node for m in seats.values())
            check(rows[node][2] == str(want), f"{node}: {rows[node][2]} open connections, its players: {want}; {out!r}")
        return "relay-1..3 UP, " + ", ".join(f"{n} {rows[n][2]}" for n in NODES) + " connections"

    def check_nodes(out):
        keys = lines(out)
        check(all(k.startswith("lr:{nodes}:node:") for k in keys), f"not node keys: {keys}")
        check(sorted(node_id(k[len("lr:{nodes}:node:"):]) for k in keys) == list(NODES), f"live nodes {keys}")
        for member in seats.values():
            check("lr:{nodes}:node:" + node_key(member) in keys, f"{node_key(member)} (a seat's node) not among {keys}")
        return f"{len(keys)} live nodes, the seats' among them"

    def check_lobbies(out):
        check(lobby_key in lines(out), f"{lobby_key} not in {out!r}")
        return f"{lobby_key[:22]}...}} among {len(lines(out))}"

    def check_inspect(out):
        check(f"lobby:   {h}" in out, f"not the game's lobby: {out!r}")
        got = {int(m.group(1)): m.group(2) for m in re.finditer(r"^seat (\d+): (\S+)(?: \([^)]*\))*$", out, re.M)}
        check(got == seats, f"seats {got}, the game's: {seats}")
        return f"the lobby's hash and its seats {sorted(got)}"

    def check_hgetall(out):
        ls = lines(out)
        got = {int(ls[i]): ls[i + 1] for i in range(0, len(ls) - 1, 2)}
        check(len(ls) % 2 == 0 and got == seats, f"HGETALL: {out!r}, the game's seats: {seats}")
        return f"seats {sorted(got)}"

    def check_metrics(out):
        want = sum(node_id(m) == "relay-1" for m in seats.values())
        check(re.search(r"^lobby_relay_connections \d", out, re.M), f"no lobby_relay_connections in {out[:300]!r}")
        check(counter(out, "lobby_relay_members") == want, f"relay-1's lobby_relay_members is "
              f"{counter(out, 'lobby_relay_members')}, its players: {want}")
        return f"relay-1's metrics, lobby_relay_members {want}"

    # One check per recipe, chosen by what it runs: a README recipe without a
    # check (or two for one check) fails the test.
    checks = [
        (r"\bps\s*(#|$)", check_ps), (r";csv", check_csv), (r"lr:\{nodes\}:node:", check_nodes),
        (r"'lr:lobby:\*'", check_lobbies), (r"lobby-relay inspect", check_inspect),
        (r"HGETALL", check_hgetall), (r"/metrics", check_metrics),
    ]
    used = set()
    for r in recipes:
        matching = [(p, c) for p, c in checks if re.search(p, r["readme"])]
        check(len(matching) == 1, f"README's recipe `{r['readme']}` matches {len(matching)} checks of compose-e2e.sh, not one")
        pattern, checker = matching[0]
        check(pattern not in used, f"two README recipes for one check ({pattern})")
        used.add(pattern)
        p = subprocess.run(["bash", "-o", "pipefail", "-c", r["run"]], stdin=subprocess.DEVNULL, env=env,
                           cwd=os.environ["E2E_ROOT"], capture_output=True, text=True, timeout=60)
        check(p.returncode == 0, f"README's recipe `{r['readme']}`, run as `{r['run']}` without a terminal, "
              f"exited {p.returncode}: {(p.stderr or p.stdout).strip()[-600:]}")
        say(f"README: {r['readme'].split('  #')[0].strip()[:70]} -> {checker(p.stdout)}")
    check(len(used) == len(checks), f"README's recipes ran {len(used)} of the {len(checks)} checks")


def check_prometheus():
    """The monitoring profile's Prometheus, through its HTTP API."""
    base = os.environ["E2E_PROMETHEUS_URL"]

    def api(path):
        with urllib.request.urlopen(base + path, timeout=5) as r:
            answer = json.loads(r.read().decode())
        check(answer.get("status") == "success", f"{path}: {answer}")
        return answer["data"]

    # The first scrape of each target comes within one scrape interval (15 s).
    t = time.monotonic()
    while True:
        targets = [x for x in api("/api/v1/targets")["activeTargets"] if x["labels"].get("job") == "lobby-relay"]
        health = sorted((x["labels"].get("instance"), x["health"], x.get("lastError", "")) for x in targets)
        if len(targets) == 3 and all(x[1] == "up" for x in health):
            break
        check(time.monotonic() - t < 60, f"Prometheus's targets of job lobby-relay after 60 s: {health} (want 3, up)")
        time.sleep(1)
    say(f"Prometheus /api/v1/targets: {', '.join(x[0] for x in health)} up (job lobby-relay), "
        f"{time.monotonic() - t:.0f} s after the game")
    with open(os.path.join(os.environ["E2E_ROOT"], "deploy/prometheus/alerts.yml")) as f:
        want = sorted(re.findall(r"^\s*- alert: (\S+)", f.read(), re.M))
    groups = {g["name"]: g for g in api("/api/v1/rules")["groups"]}
    check("lobby-relay" in groups, f"no rule group lobby-relay in {sorted(groups)}")
    rules = groups["lobby-relay"]["rules"]
    alerts = sorted(r["name"] for r in rules if r["type"] == "alerting")
    check(want and alerts == want, f"group lobby-relay has the alerts {alerts}, alerts.yml {want}")
    bad = [r["name"] for r in rules if r.get("health") == "err"]
    check(not bad, f"rules that fail to evaluate: {bad}")
    say(f"Prometheus /api/v1/rules: group lobby-relay with the {len(alerts)} alerts of alerts.yml")
    series = api("/api/v1/query?query=lobby_relay_connections")["result"]
    instances = sorted(s["metric"].get("instance", "") for s in series)
    check(instances == [f"{n}:8765" for n in NODES], f"lobby_relay_connections: {series}")
    say(f"Prometheus query lobby_relay_connections: {len(series)} series ({', '.join(instances)})")


async def join_pair(passphrase):
    a = await Player("A").open()
    await a.send({"type": "join", "passphrase": passphrase})
    await a.expect({"type": "joined", "players": 1, "capacity": 2, "seat": 1})
    b = await Player("B").open()
    await b.send({"join": passphrase})
    await b.expect({"type": "joined", "players": 2, "capacity": 2, "seat": 2})
    await b.expect({"type": "ready", "players": 2})
    await a.expect({"type": "ready", "players": 2})
    return a, b


async def exchange(a, b, n):
    """n messages each way, in order and byte for byte; returns how many each sent."""
    for i in range(n):
        await a.send(f'{{"type":"playerMove","x":{i},  "y":2}}')
    for i in range(n):
        got = await b.raw()
        check(got == f'{{"type":"playerMove","x":{i},  "y":2}}', f"{b.name} got {got!r}")
    for i in range(n):
        await b.send(f'{{"type":"chat","n":{i},"text":"gg"}}')
    for i in range(n):
        got = await a.raw()
        check(got == f'{{"type":"chat","n":{i},"text":"gg"}}', f"{a.name} got {got!r}")
    await a.send(b"\x00\x01binary\xff")
    got = await b.raw()
    check(got == b"\x00\x01binary\xff", f"{b.name} got {got!r} for a binary frame")
    await a.send({"type": "ping", "t": 123})
    await a.expect({"type": "pong", "t": 123})
    return n + 1


async def wait_closed(player, timeout):
    t = time.monotonic()
    try:
        while True:
            await asyncio.wait_for(player.ws.recv(), timeout - (time.monotonic() - t))
    except ConnectionClosed:
        return time.monotonic() - t
    except asyncio.TimeoutError:
        return None


async def full():
    passphrase = os.environ["E2E_PASS"]
    h = lobby_hash(passphrase)
    check_pages()
    say(f"passphrase {passphrase!r}, lobby {h}")

    say("A and B join through HAProxy")
    a, b = await join_pair(passphrase)
    sent = await exchange(a, b, 20)
    say(f"game: 20 messages each way, a binary frame, ping/pong: all delivered in order")

    # Where they sit: the third relay (holding neither) runs inspect. These
    # checks block (docker, compose): in a thread, so that the players keep
    # answering the nodes' pings meanwhile (a loaded machine may take longer
    # than the idle timeout, 30 s, over them).
    def look():
        seats = seats_in_redis(h)
        check(sorted(seats) == [1, 2], f"seats in Redis: {seats}")
        node_a, node_b = node_id(seats[1]), node_id(seats[2])
        check(node_a in NODES and node_b in NODES, f"member ids not of relay-1..3: {seats}")
        check(node_a != node_b, f"both players on {node_a}: HAProxy should spread them (leastconn)")
        third = next(n for n in NODES if n not in (node_a, node_b))
        where(passphrase, h, third)
        say(f"A is on {node_a}, B on {node_b}: two relay containers")
        readme_recipes(h, seats)

        # Nodes trust HAProxy's address only: any other container on the network
        # (here: another node, as a Prometheus scraper would) is a plain client.
        out = compose("exec", "-T", third, "curl", "-fsS", "--max-time", "3", f"http://{node_a}:8765/readyz")
        check(out.strip() == "ready", f"{third} -> {node_a}:8765/readyz answered {out!r}")
        say(f"{third} reaches http://{node_a}:8765/readyz directly: {out.strip()!r}")

        # Each player's node counted the game messages it relayed to its player
        # (text and binary, not events) and those its player sent.
        for node in (node_a, node_b):
            code, body = metrics(node)
            check(code == "200", f"{node}/metrics answered {code}")
            relayed = (counter(body, 'lobby_relay_messages_out_total{kind="text"}')
                       + counter(body, 'lobby_relay_messages_out_total{kind="binary"}'))
            received = counter(body, 'lobby_relay_messages_in_total')
            say(f"{node}/metrics: messages_in {received:.0f}, relayed out {relayed:.0f}, "
                f"connections {counter(body, 'lobby_relay_connections'):.0f} "
                f"(each player sent {sent} game messages besides join and ping)")
            # A sent `sent` (text + one binary), B sent `sent - 1`: each node
            # relayed at least `sent - 1` to its player and took as many in.
            check(relayed >= sent - 1, f"{node} counted {relayed} relayed messages, its player got at least {sent - 1}")
            check(received >= sent - 1, f"{node} counted {received} messages in, its player sent at least {sent - 1}")
        return seats, node_a, node_b

    seats, node_a, node_b = await asyncio.to_thread(look)

    # Kill B's node: A hears playerLeft within the bound, B's connection ends.
    victim = node_b
    cid = compose("ps", "-q", victim).strip()
    dead_key = node_key(seats[2])
    say(f"docker kill {victim} ({cid[:12]}), holding B ({seats[2]})")
    t_kill = time.monotonic()
    run(["docker", "kill", cid])
    closed = asyncio.create_task(wait_closed(b, 20))
    left = await a.recv(timeout=PLAYER_LEFT_BOUND + 5)
    dt = time.monotonic() - t_kill
    check(left == {"type": "playerLeft", "players": 1, "seat": 2}, f"A: expected playerLeft, got {left}")
    say(f"A got {json.dumps(left)} {dt:.1f} s after the kill (bound {PLAYER_LEFT_BOUND} s)")
    check(dt <= PLAYER_LEFT_BOUND, f"playerLeft after {dt:.1f} s, above the bound of {PLAYER_LEFT_BOUND} s")
    b_closed = await closed
    check(b_closed is not None, "B's connection through HAProxy was still open 20 s after its node was killed")
    say(f"B's connection closed {b_closed:.1f} s after the kill (it would reconnect through HAProxy)")

    say("C joins through HAProxy and takes seat 2")
    c = await Player("C").open()
    await c.send({"type": "join", "passphrase": passphrase})
    await c.expect({"type": "joined", "players": 2, "capacity": 2, "seat": 2})
    await c.expect({"type": "ready", "players": 2})
    await a.expect({"type": "ready", "players": 2})
    await exchange(a, c, 5)
    seats = where(passphrase, h, node_a)
    check(node_key(seats[2]) != dead_key, f"seat 2 still held by the dead node: {seats}")
    say(f"C is on {node_id(seats[2])}; the game goes on")
    # HAProxy takes a node out after two failed checks (inter 1s fall 2,
    # timeout check 1s): a few seconds after the kill, maybe after playerLeft.
    deadline = t_kill + 10
    while not (status := haproxy_status()).get(victim, "").startswith("DOWN"):
        check(time.monotonic() < deadline, f"HAProxy does not show {victim} down 10 s after the kill: {status}")
        await asyncio.sleep(0.2)
    say(f"HAProxy's view: {status}")

    _, body = metrics(node_a)
    say(f"{node_a}/metrics after the game: messages_in {counter(body, 'lobby_relay_messages_in_total'):.0f}, "
        f"messages_out {counter(body, 'lobby_relay_messages_out_total'):.0f}")

    await c.close()
    await a.expect({"type": "playerLeft", "players": 1, "seat": 2})
    await a.close()
    deadline = time.monotonic() + 5
    while seats_in_redis(h):
        check(time.monotonic() < deadline, "the lobby is still in Redis 5 s after both players left")
        await asyncio.sleep(0.2)
    say("both players left: the lobby's key is gone from Redis")
    state = run(["docker", "inspect", "-f", "{{.State.Status}}, restarts {{.RestartCount}}", cid]).strip()
    say(f"the killed container {victim} now: {state}")


async def smoke():
    passphrase = os.environ["E2E_PASS"]
    check_pages()
    a, b = await join_pair(passphrase)
    await exchange(a, b, 3)
    seats = seats_in_redis(lobby_hash(passphrase))
    check(node_id(seats[1]) != node_id(seats[2]), f"both players on one node: {seats}")
    await a.close()
    await b.close()
    say(f"two players joined through HAProxy ({node_id(seats[1])}, {node_id(seats[2])}), got ready and played")
    if os.environ.get("E2E_PROMETHEUS_URL"):
        check_prometheus()


try:
    asyncio.run(full() if MODE == "full" else smoke())
except Failed as e:
    say(f"FAILED: {e}")
    sys.exit(1)
PYTHON

python_scenario() {
  E2E_COMPOSE=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \
    timeout 60 "${COMPOSE_CMD[@]}" -f "$ROOT/docker-compose.yml" -p "$PROJECT") \
    E2E_URL=ws://127.0.0.1:$PLAYER_PORT/ E2E_HTTP_URL=http://127.0.0.1:$PLAYER_PORT \
    E2E_STATS_URL=http://127.0.0.1:$STATS_PORT/ E2E_PASS=$2 E2E_ADMIN_TOKEN=${LOBBY_RELAY_ADMIN_TOKEN:-} \
    E2E_RECIPES=$TMP/recipes.json E2E_ROOT=$ROOT E2E_PROJECT=$PROJECT E2E_PROMETHEUS_URL=${3:-} \
    timeout 180 "$PY" "$TMP/e2e.py" "$1" || fail "the $1 scenario failed"
}

# The relay containers' own environment: whether LOBBY_RELAY_ADMIN_TOKEN is in
# it (as NAME=..., or as NAME alone, which Docker leaves unset).
admin_token_in_nodes() {
  local service cid
  for service in relay-1 relay-2 relay-3; do
    cid=$(compose ps -q "$service")
    docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$cid" | grep -c '^LOBBY_RELAY_ADMIN_TOKEN=' || true
  done | paste -sd' '
}

# --- first cycle -------------------------------------------------------------------------------
step "first run: up with an admin token, the pages and a game through HAProxy, a node killed, down"
# A random token for this run: compose passes it to every node.
LOBBY_RELAY_ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export LOBBY_RELAY_ADMIN_TOKEN
up
[ "$(admin_token_in_nodes)" = "1 1 1" ] || fail "LOBBY_RELAY_ADMIN_TOKEN is not set in every relay container"
t=$SECONDS
python_scenario full "$PASSPHRASE"
say "scenario in $((SECONDS - t)) s"
down_and_check readme

# --- second cycle ------------------------------------------------------------------------------
step "second run: up --monitoring without an admin token, the pages, a short game, Prometheus, down"
unset LOBBY_RELAY_ADMIN_TOKEN
up --monitoring
[ "$(admin_token_in_nodes)" = "0 0 0" ] || fail "LOBBY_RELAY_ADMIN_TOKEN is set in a relay container although it is unset"
t=$SECONDS
python_scenario smoke "lre2e-$$-second-round" "http://127.0.0.1:$PROMETHEUS_PORT"
say "scenario in $((SECONDS - t)) s"
down_and_check local
