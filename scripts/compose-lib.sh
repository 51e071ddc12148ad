# Shared by scripts/compose-local.sh and scripts/compose-e2e.sh (sourced, not
# run): the local images that let docker-compose.yml run where no container
# registry can be reached, and the compose helpers both scripts need.
#
# The caller sets, before sourcing:
#   ROOT     the repository
#   CL_NAME  its name in messages (compose-local, compose-e2e)
#   CL_TMP   a scratch folder it removes itself
# and may set CL_START (SECONDS at its start, for the time stamps).
#
# Images (nothing is pulled; PREFIX and TAG are the caller's):
#   PREFIX-base:SUITE   a Debian base with redis-server, haproxy,
#                       ca-certificates and curl: mmdebstrap (from the
#                       machine's apt sources) piped into `docker import`,
#                       labelled with its package list; built once, then
#                       reused (it takes about a minute);
#   PREFIX-monitoring-base:SUITE   the same with prometheus and
#                       ca-certificates, only for the monitoring profile;
#   PREFIX-redis:TAG, PREFIX-haproxy:TAG   from the base (deploy/test-images/),
#                       stand-ins for the public Redis and HAProxy images;
#   PREFIX-prometheus:TAG  from the monitoring base, a stand-in for the
#                       public Prometheus image (only with monitoring);
#   PREFIX-relay:TAG    the project's Dockerfile, `--target runtime-prebuilt`
#                       with the base as RUNTIME_IMAGE, around a binary built
#                       on this machine (the Rust builder image cannot be had
#                       without a registry).
# The classic builder's intermediate images are the parents of these: `docker
# rmi PREFIX-relay:TAG` removes them with it (unless another image shares them).
# The base images are built under a lock file, so that two scripts started
# together do not both build one.

CL_START=${CL_START:-$SECONDS}
CL_BASE_PACKAGES=redis-server,haproxy,ca-certificates,curl
CL_MONITORING_BASE_PACKAGES=prometheus,ca-certificates
CL_BASE_LABEL=org.lobby-relay.test-base.packages

step() { printf '\n[%s %3ds] == %s\n' "$CL_NAME" $((SECONDS - CL_START)) "$*"; }
say() { printf '[%s %3ds] %s\n' "$CL_NAME" $((SECONDS - CL_START)) "$*"; }
fail() {
  printf '[%s %3ds] FAILED: %s\n' "$CL_NAME" $((SECONDS - CL_START)) "$*" >&2
  exit 1
}
# Runs a command quietly, its output kept in a log; shows the log if it fails.
quietly() {
  local log=$CL_TMP/quiet.log
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" | sed 's/^/    /' >&2
    fail "command failed: $*"
  fi
}

# 0 if a Docker engine answers.
cl_have_docker() {
  command -v docker >/dev/null 2>&1 && timeout 30 docker info >/dev/null 2>&1
}

# Sets COMPOSE_CMD (an array): $COMPOSE if set, else `docker compose` if it
# works, else docker-compose. Returns 1, saying so, if there is none.
cl_find_compose() {
  if [ -n "${COMPOSE:-}" ]; then
    read -r -a COMPOSE_CMD <<<"$COMPOSE"
  elif docker compose version >/dev/null 2>&1; then
    COMPOSE_CMD=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE_CMD=(docker-compose)
  else
    printf '[%s] a Docker engine answers but there is no compose: install the Compose plugin (docker compose) or Debian'"'"'s docker-compose\n' "$CL_NAME" >&2
    return 1
  fi
}

# Sets BIN: $LOBBY_RELAY_BIN, or a release build of this checkout.
cl_relay_binary() {
  if [ -n "${LOBBY_RELAY_BIN:-}" ]; then
    [ -x "$LOBBY_RELAY_BIN" ] || fail "LOBBY_RELAY_BIN is not an executable file: $LOBBY_RELAY_BIN"
    BIN=$LOBBY_RELAY_BIN
    say "using LOBBY_RELAY_BIN=$BIN"
    return
  fi
  command -v cargo >/dev/null 2>&1 || fail "cargo is not on PATH (install Rust, https://rustup.rs, or set LOBBY_RELAY_BIN)"
  local t=$SECONDS target_dir
  say "cargo build --release --locked --bin lobby-relay"
  (cd "$ROOT" && cargo build --release --locked --bin lobby-relay) || fail "cargo build failed"
  target_dir=$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  BIN=${target_dir:-$ROOT/target}/release/lobby-relay
  [ -x "$BIN" ] || fail "no binary at $BIN after the build"
  say "built $BIN in $((SECONDS - t)) s"
}

# Sets SUITE: $LOBBY_RELAY_LOCAL_SUITE, else this machine's Debian release,
# else bookworm.
cl_suite() {
  if [ -n "${LOBBY_RELAY_LOCAL_SUITE:-}" ]; then
    SUITE=$LOBBY_RELAY_LOCAL_SUITE
  else
    SUITE=$( (
      # shellcheck source=/dev/null
      . /etc/os-release 2>/dev/null && [ "${ID:-}" = debian ] && [ -n "${VERSION_CODENAME:-}" ] && echo "$VERSION_CODENAME"
    ) || echo bookworm)
  fi
}

cl_image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

# Removes an image that a rebuild left without a tag (not one still in use).
cl_drop_if_dangling() {
  local old=$1 new
  new=$(cl_image_id "$2")
  if [ -n "$old" ] && [ "$old" != "$new" ] &&
    [ "$(docker image inspect -f '{{len .RepoTags}}' "$old" 2>/dev/null)" = 0 ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}

# Builds a base image (IMAGE, a Debian SUITE with PACKAGES, comma-separated)
# unless it exists with that label. Usage: cl_base_image IMAGE PACKAGES
cl_base_image() {
  # One build at a time on this machine (a second caller waits, then finds
  # the image there).
  (
    flock 9 || true
    cl_base_image_locked "$@"
  ) 9>>"${TMPDIR:-/tmp}/lobby-relay-base-image.$(id -u).lock"
}

cl_base_image_locked() {
  local base=$1 packages=$2 old t=$SECONDS
  if [ "$(docker image inspect -f "{{index .Config.Labels \"$CL_BASE_LABEL\"}}" "$base" 2>/dev/null)" = "$packages" ]; then
    say "$base exists: reused"
    return
  fi
  # A stale base is replaced under the same tag; the old one is removed once
  # no image built on it is left.
  old=$(cl_image_id "$base")
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing mmdebstrap (apt-get)"
      quietly env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap
    else
      fail "mmdebstrap is needed to build $base: sudo apt-get install mmdebstrap"
    fi
  fi
  say "building $base: mmdebstrap --variant=apt --include=$packages $SUITE | docker import (about a minute, once)"
  if ! timeout 600 mmdebstrap --quiet --variant=apt --include="$packages" "$SUITE" - 2>"$CL_TMP/mmdebstrap.log" |
    docker import --change "LABEL $CL_BASE_LABEL=$packages" - "$base" >/dev/null; then
    tail -n 30 "$CL_TMP/mmdebstrap.log" >&2
    fail "could not build $base"
  fi
  cl_drop_if_dangling "$old" "$base"
  say "built $base in $((SECONDS - t)) s"
}

# Builds one image from deploy/test-images/NAME.Dockerfile on BASE.
# Usage: cl_test_image IMAGE NAME BASE
cl_test_image() {
  local image=$1 name=$2 base=$3 old
  old=$(cl_image_id "$image")
  quietly docker build --build-arg "BASE=$base" -t "$image" \
    -f "$ROOT/deploy/test-images/$name.Dockerfile" "$ROOT/deploy/test-images"
  cl_drop_if_dangling "$old" "$image"
}

# Builds the images (see the header) around $BIN and exports the compose
# file's variables for them: REDIS_IMAGE, HAPROXY_IMAGE, RELAY_IMAGE (and
# PROMETHEUS_IMAGE with `monitoring`). Usage: cl_build_images PREFIX TAG [monitoring]
cl_build_images() {
  local prefix=$1 tag=$2 monitoring=${3:-} image old version t prometheus=
  cl_suite
  cl_base_image "$prefix-base:$SUITE" "$CL_BASE_PACKAGES"
  if [ "$monitoring" = monitoring ]; then
    cl_base_image "$prefix-monitoring-base:$SUITE" "$CL_MONITORING_BASE_PACKAGES"
  fi
  t=$SECONDS
  cl_test_image "$prefix-redis:$tag" redis "$prefix-base:$SUITE"
  cl_test_image "$prefix-haproxy:$tag" haproxy "$prefix-base:$SUITE"
  if [ "$monitoring" = monitoring ]; then
    cl_test_image "$prefix-prometheus:$tag" prometheus "$prefix-monitoring-base:$SUITE"
  fi
  # The build context is a folder holding the binary alone.
  image=$prefix-relay:$tag
  rm -rf "$CL_TMP/relay-context"
  mkdir -p "$CL_TMP/relay-context"
  cp "$BIN" "$CL_TMP/relay-context/lobby-relay"
  old=$(cl_image_id "$image")
  quietly docker build --target runtime-prebuilt --build-arg "RUNTIME_IMAGE=$prefix-base:$SUITE" \
    -t "$image" -f "$ROOT/Dockerfile" "$CL_TMP/relay-context"
  cl_drop_if_dangling "$old" "$image"
  rm -rf "$CL_TMP/relay-context"
  version=$(docker run --rm "$image" --version 2>&1) ||
    fail "the relay image does not run its binary: $version (a binary built against a newer glibc than $SUITE's? set LOBBY_RELAY_LOCAL_SUITE)"
  export REDIS_IMAGE=$prefix-redis:$tag HAPROXY_IMAGE=$prefix-haproxy:$tag RELAY_IMAGE=$prefix-relay:$tag
  if [ "$monitoring" = monitoring ]; then
    export PROMETHEUS_IMAGE=$prefix-prometheus:$tag
    prometheus=", $PROMETHEUS_IMAGE"
  fi
  say "built $REDIS_IMAGE, $HAPROXY_IMAGE$prometheus, $RELAY_IMAGE ($version) in $((SECONDS - t)) s"
}

# A page through HTTP on the host (curl, else Python).
cl_http_get() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 2 "$1"
  else
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$1"
  fi
}

# Where compose published a service's port, for this host: 127.0.0.1:PORT.
# Usage: cl_published SERVICE PORT (uses the caller's `compose`).
cl_published() {
  local addr
  addr=$(compose port "$1" "$2" 2>/dev/null | tail -n 1) || true
  [ -n "$addr" ] || return 1
  case ${addr%:*} in
    0.0.0.0 | "[::]" | "::" | "") printf '127.0.0.1:%s\n' "${addr##*:}" ;;
    *) printf '%s\n' "$addr" ;;
  esac
}

# Waits until every service in CL_SERVICES runs healthy and HAProxy sees the
# three nodes UP (its stats page as CSV). Usage: cl_wait_healthy SECONDS
cl_wait_healthy() {
  local deadline=$((SECONDS + ${1:-90})) service cid status states all stats csv up
  while :; do
    all=1
    states=()
    for service in "${CL_SERVICES[@]}"; do
      cid=$(compose ps -q "$service" 2>/dev/null || true)
      status=$( [ -n "$cid" ] && docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}' "$cid" 2>/dev/null || echo missing)
      states+=("$service=$status")
      case $status in
        running/healthy | running/no-healthcheck) ;;
        *) all=0 ;;
      esac
    done
    if [ $all = 1 ] && stats=$(cl_published haproxy 8404) &&
      csv=$(cl_http_get "http://$stats/;csv" 2>/dev/null); then
      up=$(printf '%s\n' "$csv" | awk -F, '$1 == "relays" && $2 ~ /^relay-/ && $18 == "UP"' | wc -l)
      if [ "$up" -eq 3 ]; then
        say "healthy: ${states[*]}; HAProxy: relay-1..3 UP"
        return 0
      fi
    fi
    [ $SECONDS -lt $deadline ] || fail "not healthy after ${1:-90} s: ${states[*]}"
    sleep 1
  done
}
