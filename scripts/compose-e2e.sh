#!/usr/bin/env bash
# End-to-end test of docker-compose.yml, with no container registry needed.
#
# Usage: scripts/compose-e2e.sh            (no arguments; see the variables below)
#
# Without a Docker engine it prints "compose e2e skipped: no Docker engine"
# and exits 0. Otherwise:
#   1. builds local images (namespaced lobby-relay-test-*; nothing is pulled):
#      - lobby-relay-test-base:SUITE, a Debian base with redis-server, haproxy,
#        ca-certificates and curl: mmdebstrap (from the machine's apt
#        sources) piped into `docker import`; built once, then reused;
#      - lobby-relay-test-redis:e2e and lobby-relay-test-haproxy:e2e from it
#        (deploy/test-images/), stand-ins for the public Redis and HAProxy
#        images;
#      - lobby-relay-test-relay:e2e from the project's Dockerfile with
#        `--target runtime-prebuilt` and the base as RUNTIME_IMAGE, around a
#        binary built on this machine (`cargo build --release --locked --bin
#        lobby-relay`): the Rust builder image cannot exist without a registry;
#   2. brings the unchanged docker-compose.yml up as project lre2e<pid>, with
#      the image variables pointing at those images, HAProxy's ports on free
#      127.0.0.1 ports and a free /24 network, and waits until every service
#      is healthy and HAProxy sees the three nodes up;
#   3. checks the browser pages through HAProxy's published port: GET / and
#      /playground answer 200 with the playground page; with the admin token
#      set for the stack (LOBBY_RELAY_ADMIN_TOKEN, a random one), /admin
#      serves the admin page, /admin/api/cluster answers 401 without the
#      token (or with a wrong one) and, with it, lists relay-1..3 alive;
#      then plays through the same port (Python, websockets): two
#      players join, get ready and exchange text, binary and ping messages;
#      they sit on two different relay containers, as `redis-cli HGETALL`
#      in the redis container shows, and `lobby-relay inspect` in a relay
#      container agrees; a container on the network that is not HAProxy
#      reaches a node directly (nodes trust HAProxy's address only); each
#      node's /metrics is scraped; the relay container of one player is
#      killed (SIGKILL): the other gets playerLeft within the bound, and a new
#      player takes the seat through HAProxy and plays;
#   4. `down -v`, and checks that no container, network or volume of the
#      project remains; then a second up / healthy / short game / down, this
#      time with LOBBY_RELAY_ADMIN_TOKEN unset: the nodes must have no such
#      variable at all, the playground still answers and /admin and
#      /admin/api/cluster answer 404.
# On any failure, or Ctrl-C, it shows the services' state and last log lines
# and takes the project down.
#
# Environment:
#   COMPOSE                  the compose command, e.g. "docker-compose" [docker
#                            compose if it works, else docker-compose]
#   LOBBY_RELAY_BIN          a lobby-relay binary to put in the image instead
#                            of building one (must run on the base's glibc)
#   LOBBY_RELAY_TEST_SUITE   the Debian release of the base image [this
#                            machine's, if it is Debian; else bookworm]
#   LOBBY_RELAY_SKIP_COMPOSE_E2E=1   skip, saying so
#   CARGO_TARGET_DIR         as for cargo
# Python 3 with `websockets` is used as it is, or installed from PyPI into a
# virtualenv in a temporary folder. mmdebstrap is installed with apt-get if
# the base image has to be built and it is missing.
#
# Images stay for the next run (the base image takes about a minute to make);
# remove them with: docker rmi $(docker images -q 'lobby-relay-test-*')
#
# Exit status: 0 passed or skipped; 1 failed; 130/143 interrupted (cleaned up).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
START=$SECONDS
PROJECT=lre2e$$
TAG=e2e
BASE_PACKAGES=redis-server,haproxy,ca-certificates,curl
BASE_LABEL=org.lobby-relay.test-base.packages

step() { printf '\n[compose-e2e %3ds] == %s\n' $((SECONDS - START)) "$*"; }
say() { printf '[compose-e2e %3ds] %s\n' $((SECONDS - START)) "$*"; }
fail() {
  printf '[compose-e2e %3ds] FAILED: %s\n' $((SECONDS - START)) "$*" >&2
  exit 1
}
# Runs a command quietly, its output kept in a log; shows the log if it fails.
quietly() {
  local log=$TMP/quiet.log
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" | sed 's/^/    /' >&2
    fail "command failed: $*"
  fi
}

# --- skip? ------------------------------------------------------------------------
if [ "${LOBBY_RELAY_SKIP_COMPOSE_E2E:-0}" = 1 ]; then
  echo "compose e2e skipped: LOBBY_RELAY_SKIP_COMPOSE_E2E=1"
  exit 0
fi
if ! command -v docker >/dev/null 2>&1 || ! timeout 30 docker info >/dev/null 2>&1; then
  echo "compose e2e skipped: no Docker engine"
  exit 0
fi

if [ -n "${COMPOSE:-}" ]; then
  read -r -a COMPOSE_CMD <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD=(docker-compose)
else
  fail "a Docker engine answers but there is no compose: install the Compose plugin (docker compose) or Debian's docker-compose"
fi
command -v python3 >/dev/null 2>&1 || fail "python3 is needed (install it, e.g. apt-get install python3)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/lobby-relay-compose-e2e.XXXXXX")
PROJECT_UP=0
CONTAINERS_SEEN=()

compose() {
  timeout 240 "${COMPOSE_CMD[@]}" -f "$ROOT/docker-compose.yml" -p "$PROJECT" "$@"
}

show_state() {
  say "state of project $PROJECT:"
  compose ps 2>&1 | sed 's/^/    /' >&2 || true
  local service
  for service in redis relay-1 relay-2 relay-3 haproxy; do
    say "last log lines of $service:"
    compose logs --no-color --tail=25 "$service" 2>&1 | sed 's/^/    /' >&2 || true
  done
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$PROJECT_UP" = 1 ]; then
    if [ "$rc" -ne 0 ]; then show_state; fi
    say "cleaning up: $(printf '%s ' "${COMPOSE_CMD[@]}")-p $PROJECT down -v"
    compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  fi
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
step "relay binary"
if [ -n "${LOBBY_RELAY_BIN:-}" ]; then
  [ -x "$LOBBY_RELAY_BIN" ] || fail "LOBBY_RELAY_BIN is not an executable file: $LOBBY_RELAY_BIN"
  BIN=$LOBBY_RELAY_BIN
  say "using LOBBY_RELAY_BIN=$BIN"
else
  command -v cargo >/dev/null 2>&1 || fail "cargo is not on PATH (or set LOBBY_RELAY_BIN)"
  t=$SECONDS
  say "cargo build --release --locked --bin lobby-relay"
  (cd "$ROOT" && cargo build --release --locked --bin lobby-relay) || fail "cargo build failed"
  target_dir=$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  BIN=$target_dir/release/lobby-relay
  [ -x "$BIN" ] || fail "no binary at $BIN after the build"
  say "built $BIN in $((SECONDS - t)) s"
fi

# --- images -------------------------------------------------------------------------------
step "local images (nothing is pulled)"
if [ -n "${LOBBY_RELAY_TEST_SUITE:-}" ]; then
  SUITE=$LOBBY_RELAY_TEST_SUITE
else
  SUITE=$( (
    # shellcheck source=/dev/null
    . /etc/os-release 2>/dev/null && [ "${ID:-}" = debian ] && [ -n "${VERSION_CODENAME:-}" ] && echo "$VERSION_CODENAME"
  ) || echo bookworm)
fi
BASE_IMAGE=lobby-relay-test-base:$SUITE
REDIS_TEST_IMAGE=lobby-relay-test-redis:$TAG
HAPROXY_TEST_IMAGE=lobby-relay-test-haproxy:$TAG
RELAY_TEST_IMAGE=lobby-relay-test-relay:$TAG

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
# Removes an image that a rebuild left without a tag (not one still in use).
drop_if_dangling() {
  local old=$1 new
  new=$(image_id "$2")
  if [ -n "$old" ] && [ "$old" != "$new" ] &&
    [ "$(docker image inspect -f '{{len .RepoTags}}' "$old" 2>/dev/null)" = 0 ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}

t=$SECONDS
if [ "$(docker image inspect -f "{{index .Config.Labels \"$BASE_LABEL\"}}" "$BASE_IMAGE" 2>/dev/null)" = "$BASE_PACKAGES" ]; then
  say "$BASE_IMAGE exists: reused"
else
  # A stale base: drop it with the images built on it (and so their layers).
  if [ -n "$(image_id "$BASE_IMAGE")" ]; then
    docker rmi "$REDIS_TEST_IMAGE" "$HAPROXY_TEST_IMAGE" "$RELAY_TEST_IMAGE" "$BASE_IMAGE" >/dev/null 2>&1 || true
  fi
  old=$(image_id "$BASE_IMAGE")
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing mmdebstrap (apt-get)"
      quietly env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap
    else
      fail "mmdebstrap is needed to build $BASE_IMAGE: sudo apt-get install mmdebstrap"
    fi
  fi
  say "building $BASE_IMAGE: mmdebstrap --variant=apt --include=$BASE_PACKAGES $SUITE | docker import"
  if ! timeout 600 mmdebstrap --quiet --variant=apt --include="$BASE_PACKAGES" "$SUITE" - 2>"$TMP/mmdebstrap.log" |
    docker import --change "LABEL $BASE_LABEL=$BASE_PACKAGES" - "$BASE_IMAGE" >/dev/null; then
    tail -n 30 "$TMP/mmdebstrap.log" >&2
    fail "could not build $BASE_IMAGE"
  fi
  drop_if_dangling "$old" "$BASE_IMAGE"
  say "built $BASE_IMAGE in $((SECONDS - t)) s"
fi

t=$SECONDS
for name in redis haproxy; do
  image=lobby-relay-test-$name:$TAG
  old=$(image_id "$image")
  quietly docker build --build-arg "BASE=$BASE_IMAGE" -t "$image" \
    -f "$ROOT/deploy/test-images/$name.Dockerfile" "$ROOT/deploy/test-images"
  drop_if_dangling "$old" "$image"
done
# The build context is a folder holding the binary alone.
mkdir -p "$TMP/relay-context"
cp "$BIN" "$TMP/relay-context/lobby-relay"
old=$(image_id "$RELAY_TEST_IMAGE")
quietly docker build --target runtime-prebuilt --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" \
  -t "$RELAY_TEST_IMAGE" -f "$ROOT/Dockerfile" "$TMP/relay-context"
drop_if_dangling "$old" "$RELAY_TEST_IMAGE"
rm -rf "$TMP/relay-context"
version=$(docker run --rm "$RELAY_TEST_IMAGE" --version 2>&1) ||
  fail "the relay image does not run its binary: $version (a binary built against a newer glibc than $SUITE's? set LOBBY_RELAY_TEST_SUITE)"
say "built $REDIS_TEST_IMAGE, $HAPROXY_TEST_IMAGE, $RELAY_TEST_IMAGE ($version) in $((SECONDS - t)) s"

# --- the stack's variables ------------------------------------------------------------------
# Two free ports on 127.0.0.1 for HAProxy, and a /24 that no Docker network
# uses (so that a stack already running with the default one is no obstacle).
read -r PLAYER_PORT STATS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
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

export REDIS_IMAGE=$REDIS_TEST_IMAGE RELAY_IMAGE=$RELAY_TEST_IMAGE HAPROXY_IMAGE=$HAPROXY_TEST_IMAGE
export LOBBY_RELAY_PORT=127.0.0.1:$PLAYER_PORT LOBBY_RELAY_STATS_PORT=127.0.0.1:$STATS_PORT LOBBY_RELAY_NET=$NET
say "project $PROJECT: players ws://127.0.0.1:$PLAYER_PORT/, stats http://127.0.0.1:$STATS_PORT/, network $NET.0/24"
say "REDIS_IMAGE=$REDIS_IMAGE RELAY_IMAGE=$RELAY_IMAGE HAPROXY_IMAGE=$HAPROXY_IMAGE"

SERVICES=(redis relay-1 relay-2 relay-3 haproxy)

# Waits until every service's container is healthy and HAProxy sees the three
# nodes UP (its stats page as CSV).
wait_healthy() {
  local deadline=$((SECONDS + 90)) service cid status states all
  while :; do
    all=1
    states=()
    for service in "${SERVICES[@]}"; do
      cid=$(compose ps -q "$service" 2>/dev/null || true)
      status=$( [ -n "$cid" ] && docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}' "$cid" 2>/dev/null || echo missing)
      states+=("$service=$status")
      [ "$status" = running/healthy ] || all=0
    done
    if [ $all = 1 ] && python3 - "$STATS_PORT" <<'EOF'; then
import sys, urllib.request
csv = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/;csv", timeout=2).read().decode()
up = [r.split(",")[1] for r in csv.splitlines() if r.startswith("relays,relay-") and r.split(",")[17] == "UP"]
sys.exit(0 if len(up) == 3 else 1)
EOF
      say "healthy: ${states[*]}; HAProxy: relay-1..3 UP"
      return 0
    fi
    [ $SECONDS -lt $deadline ] || fail "not healthy after 90 s: ${states[*]}"
    sleep 1
  done
}

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

# `down -v`, then checks that nothing of the project is left.
down_and_check() {
  local t=$SECONDS volumes=() cid vol left
  for cid in "${CONTAINERS_SEEN[@]}"; do
    for vol in $(docker inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' "$cid" 2>/dev/null); do
      volumes+=("$vol")
    done
  done
  say "$(printf '%s ' "${COMPOSE_CMD[@]}")-p $PROJECT down -v"
  compose down -v --remove-orphans >"$TMP/down.log" 2>&1 || {
    cat "$TMP/down.log" >&2
    fail "down failed"
  }
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

up() {
  local t=$SECONDS
  say "$(printf '%s ' "${COMPOSE_CMD[@]}")-p $PROJECT up -d --no-build"
  PROJECT_UP=1
  compose up -d --no-build >"$TMP/up.log" 2>&1 || {
    cat "$TMP/up.log" >&2
    fail "up failed"
  }
  remember_project
  wait_healthy
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
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^seat (\d+): (\S+)$", out, re.M)}, out


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

    # Where they sit: the third relay (holding neither) runs inspect.
    seats = seats_in_redis(h)
    check(sorted(seats) == [1, 2], f"seats in Redis: {seats}")
    node_a, node_b = node_id(seats[1]), node_id(seats[2])
    check(node_a in NODES and node_b in NODES, f"member ids not of relay-1..3: {seats}")
    check(node_a != node_b, f"both players on {node_a}: HAProxy should spread them (leastconn)")
    third = next(n for n in NODES if n not in (node_a, node_b))
    where(passphrase, h, third)
    say(f"A is on {node_a}, B on {node_b}: two relay containers")

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

    if code == "200":
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
python_scenario full "lre2e-$$-jump-rocket"
say "scenario in $((SECONDS - t)) s"
down_and_check

# --- second cycle ------------------------------------------------------------------------------
step "second run: up without an admin token, the pages and a short game, down"
unset LOBBY_RELAY_ADMIN_TOKEN
up
[ "$(admin_token_in_nodes)" = "0 0 0" ] || fail "LOBBY_RELAY_ADMIN_TOKEN is set in a relay container although it is unset"
python_scenario smoke "lre2e-$$-second-round"
down_and_check
