#!/usr/bin/env bash
# `wss://` served by the node next to plain `ws://`, in the same run: two
# release-built nodes in memory mode (no Redis: the TLS cost alone), one
# plain and one with --tls-cert/--tls-key (an ECDSA P-256 certificate made
# here with openssl, trusted by the load generator through --ca-cert).
# ROUNDS rounds, alternating plain and TLS (the order flips each round), of
#   joins  LOBBIES lobbies formed as fast as possible (2 x LOBBIES
#          connections: TCP, TLS handshake or not, WebSocket upgrade, join,
#          ready), 256 at once: lobbies a second and the node's CPU per
#          connection
#   game   100 lobbies x 2 players x 30 Hz (6,000 msg/s), 64-byte messages,
#          10 s: the node's CPU per relayed message, and p99 latency
# and writes the medians into the section "TLS" of docs/benchmarks.md (and
# prints it).
#
# Usage: scripts/bench-tls.sh      (about 2 minutes after the build)
#   BENCH_ROUNDS=N    rounds [5]
#   BENCH_LOBBIES=N   lobbies of a joins run [2000]
#   BENCH_OUT         the report to update [docs/benchmarks.md]; - prints only
# Needs: cargo, openssl, curl, python3. Run it on a quiet machine.
#
# Exit status: 0 done; 1 a run failed its checks; 3 a tool is missing or
# the build failed; 4 a node did not start. Everything it started is
# stopped by its pid, on exit too.
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
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lobby-relay-bench-tls.XXXXXX")
trap 'cleanup; rm -rf "$WORK"' EXIT

need_bench_tools
command -v openssl >/dev/null 2>&1 || need_packages openssl
build_release
STARTED_AT=$(date +%s)

# A CA and a certificate for 127.0.0.1 signed by it (ECDSA P-256).
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.key" 2>/dev/null
openssl req -x509 -new -key "$WORK/ca.key" -subj "/CN=lobby-relay bench CA" -days 1 \
  -out "$WORK/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/node.key" 2>/dev/null
openssl req -new -key "$WORK/node.key" -subj "/CN=127.0.0.1" -out "$WORK/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/node.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 1 -extfile "$WORK/san.ext" -out "$WORK/node.pem" 2>/dev/null \
  || die 3 "openssl could not make the certificate"

OPTS=(--log-format json --max-connections 100000 --max-connections-per-address 100000
  --join-rate 100000000 --join-burst 1000000 --message-rate 10000000 --message-burst 10000000
  --shutdown-timeout 3s)
PLAIN_PORT=$(free_port)
TLS_PORT=$(free_port)
"$RELAY" serve --listen "127.0.0.1:$PLAIN_PORT" --node-id plain "${OPTS[@]}" >"$WORK/plain.log" 2>&1 &
PLAIN_PID=$!
PIDS+=("$PLAIN_PID")
"$RELAY" serve --listen "127.0.0.1:$TLS_PORT" --node-id tls --tls-cert "$WORK/node.pem" \
  --tls-key "$WORK/node.key" "${OPTS[@]}" >"$WORK/tls.log" 2>&1 &
TLS_PID=$!
PIDS+=("$TLS_PID")
wait_port "$PLAIN_PORT" /readyz "$PLAIN_PID" || die 4 "the plain node did not start (see $WORK/plain.log)"
wait_port "$TLS_PORT" "" "$TLS_PID" || die 4 "the TLS node did not start (see $WORK/tls.log)"
curl -fs --cacert "$WORK/ca.pem" -o /dev/null "https://127.0.0.1:$TLS_PORT/readyz" \
  || die 4 "the TLS node does not answer https with the certificate made here"

# run NAME KIND [bench options]: one run against the node of KIND (plain or
# tls), its JSON in $WORK/NAME.json.
run() {
  local name=$1 kind=$2
  shift 2
  local url pid
  if [ "$kind" = tls ]; then
    url="wss://127.0.0.1:$TLS_PORT/"
    pid=$TLS_PID
  else
    url="ws://127.0.0.1:$PLAIN_PORT/"
    pid=$PLAIN_PID
  fi
  echo "==> $name" >&2
  "$BENCH" --quiet --label "$name" --json "$WORK/$name.json" --url-a "$url" \
    --ca-cert "$WORK/ca.pem" --pids "relay=$pid" "$@" >"$WORK/$name.txt" ||
    { cat "$WORK/$name.txt" >&2; die 1 "$name failed"; }
}

for round in $(seq "$ROUNDS"); do
  order=(plain tls)
  [ $((round % 2)) -eq 0 ] && order=(tls plain)
  for kind in "${order[@]}"; do
    run "joins-$kind-$round" "$kind" --lobbies "$LOBBIES" --idle --duration 1s
  done
  for kind in "${order[@]}"; do
    run "game-$kind-$round" "$kind" --lobbies 100 --rate 30 --warmup 2s --duration 10s
  done
done

PYTHONPATH="$ROOT/bench" python3 - "$WORK" "$ROUNDS" "$LOBBIES" "$OUT" "$(($(date +%s) - STARTED_AT))" <<'EOF'
import datetime, json, os, statistics, subprocess, sys
from section import put_section
work, rounds, lobbies, out, took = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def load(name):
    return json.load(open(os.path.join(work, name + ".json")))
med = statistics.median
rows = {}
for kind in ("plain", "tls"):
    joins = [load(f"joins-{kind}-{r}") for r in range(1, rounds + 1)]
    games = [load(f"game-{kind}-{r}") for r in range(1, rounds + 1)]
    rate = [j["joins"]["lobbies_per_s"] for j in joins]
    per_conn = [j["joins"]["processes_cpu_s"][0] * 1e6 / (2 * j["joins"]["formed"]) for j in joins]
    per_msg = [g["processes"][0]["cpu_s"] * 1e6 / max(g["delivered_per_s"] * g["measured_s"], 1) for g in games]
    p99 = [g["latency_ms"]["p99"] for g in games]
    bad = sum(sum(g["messages"]["lost"]) + g["messages"]["duplicates"] + g["messages"]["reordered"] for g in games)
    failed = sum(j["joins"]["failed"] for j in joins)
    rows[kind] = (rate, per_conn, per_msg, p99, bad, failed)
commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(out)) if out != "-" else ".",
                         "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
L = []
w = L.append
w("<!-- begin bench-tls: written by scripts/bench-tls.sh, which rewrites everything down to the end comment -->")
w("## TLS: `wss://` served by the node next to `ws://`")
w("")
w(f"Command: `scripts/bench-tls.sh` (took {took} s after the build), on {now}, commit `{commit}`.")
w("")
w("Two release-built nodes in memory mode on the same machine, one plain and one serving `wss://` "
  "(rustls, ring; an ECDSA P-256 certificate; TLS 1.3 as negotiated by default), measured in the "
  f"same run, alternating (the order flips each round); medians of {rounds} rounds, min–max in "
  f"brackets. *Joins*: {lobbies:,} lobbies ({2 * lobbies:,} connections: TCP, the TLS handshake or "
  "not, the WebSocket upgrade, `join`, `ready`), 256 being formed at once. *Game*: 100 lobbies x 2 "
  "players x 30 Hz (6,000 msg/s), 64-byte messages, 10 s. CPU is the node's (user + system), per "
  "connection formed and per message delivered; the load generator runs on the same 2 cores.")
w("")
w("| node | lobbies formed / s (joins / s) | node CPU per connection | node CPU per message at 6,000 msg/s | p99 latency | lost/dup/reordered | not formed |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for kind, label in (("plain", "`ws://`"), ("tls", "`wss://`")):
    rate, per_conn, per_msg, p99, bad, failed = rows[kind]
    w(f"| {label} | {med(rate):,.0f} ({min(rate):,.0f}–{max(rate):,.0f}) ({2 * med(rate):,.0f} joins/s) | "
      f"{med(per_conn):,.0f} µs | {med(per_msg):.1f} µs | {med(p99):.2f} ms | {bad} | {failed} |")
w("")
tls_joins = 2 * med(rows["tls"][0])
extra_conn = med(rows["tls"][1]) - med(rows["plain"][1])
extra_msg = med(rows["tls"][2]) - med(rows["plain"][2])
w(f"A TLS connection costs the node about {extra_conn:,.0f} µs more CPU than a plain one (the "
  f"handshake), a message about {extra_msg:.1f} µs more (encryption). TLS joins a second: "
  f"{tls_joins:,.0f} (the target of issue 22: at least 3,000; "
  f"{'reached' if tls_joins >= 3000 else 'not reached'}).")
w("<!-- end bench-tls -->")
section = "\n".join(L)
print("\n".join(L[1:-1]))
put_section(out, "bench-tls", section)
EOF
