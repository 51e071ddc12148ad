#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every gate.
#
#   scripts/test.sh            format check, clippy, docs, the layers check
#                              (scripts/layers.py), the compose end-to-end test,
#                              the whole test suite (unit tests of the relay and
#                              of clients/rust, the JS client's tests and the one
#                              black-box binary, tests/integration.rs), then
#                              tests/relay.rs and tests/game_sessions.rs again on a Redis Cluster
#   scripts/test.sh -- ARGS    extra arguments for the test runner (a filter)
#
# The tests start their own redis-server (and, for tests/redis_cluster.rs and
# the second run of tests/relay.rs, a Redis Cluster of them joined by
# redis-cli; for the cluster test, haproxy; for the browser test, chromedriver
# and headless chromium) processes on free loopback ports; nothing here
# touches a Redis you already run. The Kubernetes manifests' test needs
# kubernetes-validate (PyPI), installed below into a virtualenv under the
# target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--" ]; then shift; fi

say() { printf '\n==> %s\n' "$*"; }

# Installs Debian/Ubuntu packages when we can (root or sudo), else explains.
need_packages() {
  local missing=("$@")
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
      else
        echo "error: the tests need: ${missing[*]}" >&2
        echo "       install it with: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
      fi
    fi
    say "installing ${missing[*]} (apt-get)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif command -v brew >/dev/null 2>&1; then
    say "installing redis and haproxy (brew; Chromium and chromedriver: brew install --cask chromium chromedriver)"
    brew install redis haproxy
  else
    echo "error: the tests need: ${missing[*]}, and no known package manager was found." >&2
    echo "       install Redis (redis-server and redis-cli on PATH), HAProxy, Chromium and chromedriver, and run this again." >&2
    exit 1
  fi
}

# Debian installs haproxy in /usr/sbin, which is not on a user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy) # tests/cluster_lb.rs
# tests/browser.rs: headless Chromium driven through chromedriver (WebDriver).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# tests/monitoring.rs: promtool checks deploy/prometheus/ (Debian: in `prometheus`).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# tests/js_client.rs: the JavaScript client in Node (20 or later: Debian
# 12's nodejs is 18, too old; the test says so), its types checked with tsc
# (clients/js/tsconfig.json).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v tsc >/dev/null 2>&1 || missing+=(node-typescript)
if [ ${#missing[@]} -gt 0 ]; then
  need_packages "${missing[@]}"
fi
redis-server --version
haproxy -v | sed -n 1p
chromedriver --version
promtool --version | sed -n 1p
echo "node $(node --version), tsc $(tsc --version)"

# tests/kubernetes.rs: validates deploy/kubernetes/ against the Kubernetes API
# schemas with kubernetes-validate (PyPI), which ships the schemas of every
# Kubernetes version it knows inside the package: nothing is downloaded when
# the tests run. Installed once, pinned, into a virtualenv under the target
# directory; the test finds it through LOBBY_RELAY_KUBERNETES_VENV.
KUBERNETES_VALIDATE_VERSION=1.37.0
mkdir -p "${CARGO_TARGET_DIR:-target}/tools"
LOBBY_RELAY_KUBERNETES_VENV="$(cd "${CARGO_TARGET_DIR:-target}/tools" && pwd)/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
export LOBBY_RELAY_KUBERNETES_VENV
if [ "$("$LOBBY_RELAY_KUBERNETES_VENV/bin/kubernetes-validate" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (pip) into $LOBBY_RELAY_KUBERNETES_VENV"
  command -v python3 >/dev/null 2>&1 || need_packages python3 python3-venv
  rm -rf "$LOBBY_RELAY_KUBERNETES_VENV"
  if ! python3 -m venv "$LOBBY_RELAY_KUBERNETES_VENV" >/dev/null 2>&1; then
    need_packages python3-venv # Debian's python3 has no ensurepip without it
    rm -rf "$LOBBY_RELAY_KUBERNETES_VENV"
    python3 -m venv "$LOBBY_RELAY_KUBERNETES_VENV"
  fi
  "$LOBBY_RELAY_KUBERNETES_VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
echo "kubernetes-validate $("$LOBBY_RELAY_KUBERNETES_VENV/bin/kubernetes-validate" --version)"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --workspace --all-targets -- -D warnings (the relay and clients/rust)"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

say "layers: no import circle in src/, no source file over 700 lines in src/ or clients/rust/src/ (scripts/layers.py)"
python3 scripts/layers.py

# The compose end-to-end test puts the same (debug) binary the tests run into
# its relay image: it checks the compose file, the images and the nodes
# together, not the optimiser, and a release build here would double the
# compile time of a clean checkout. (`scripts/compose-e2e.sh` alone builds a
# release binary; the Dockerfile's own build stage needs a registry.)
say "cargo build (the relay binary, debug: the tests' and the compose test's)"
cargo build --locked --bin lobby-relay
say "docker compose end to end (scripts/compose-e2e.sh; skipped without a Docker engine)"
LOBBY_RELAY_BIN="${LOBBY_RELAY_BIN:-$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/lobby-relay}" scripts/compose-e2e.sh

say "tests"
status=0
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: run them first, the whole suite last.
  cargo test --workspace --doc --locked --quiet
  cargo nextest run --workspace --locked --no-fail-fast "$@" || status=$?
else
  cargo test --workspace --locked --no-fail-fast "$@" || status=$?
fi

# The cross-node behavioural tests once more, each on a private Redis Cluster
# of three masters instead of one Redis (tests/support: Relays::redis_with).
# Run even when the suite above failed, so that one run reports both.
# (The black-box tests are one binary, `integration`; tests/relay.rs is its
# module `relay`.)
say "tests/relay.rs and tests/game_sessions.rs again on a Redis Cluster (LOBBY_RELAY_TEST_REDIS=cluster)"
if cargo nextest --version >/dev/null 2>&1; then
  LOBBY_RELAY_TEST_REDIS=cluster cargo nextest run --locked --no-fail-fast --test integration \
    -E 'test(/^relay::/) | test(/^game_sessions::/)' "$@" || status=$?
else
  LOBBY_RELAY_TEST_REDIS=cluster cargo test --locked --no-fail-fast --test integration relay:: "$@" || status=$?
  LOBBY_RELAY_TEST_REDIS=cluster cargo test --locked --no-fail-fast --test integration game_sessions:: "$@" || status=$?
fi
exit "$status"
