#!/usr/bin/env bash
# Compares two lobby-relay binaries on the headline figures of
# scripts/bench.sh: saturation (scenario a), the game load's CPU per message
# and p99 (b, the relay only) and idle memory per connection (d). The two
# are measured in alternating runs (before, after, before, after, ...), each
# a fresh scripts/bench.sh with BENCH_ONLY and BENCH_RELAY_BIN, with the same
# load generator (the one built from this tree), and the median of each
# figure is printed.
#
# Usage: scripts/bench-ab.sh [--rounds N] BEFORE_BIN [AFTER_BIN]
#   BEFORE_BIN   a lobby-relay binary (e.g. a release build of an older
#                commit: git worktree add /tmp/old REV && cargo build
#                --release --manifest-path /tmp/old/Cargo.toml)
#   AFTER_BIN    [this tree's release build]
#   --rounds N   runs of each [3]; a round takes about 2.5 minutes
#
# Environment: BENCH_ONLY [a b d], BENCH_DIR [target/bench-ab], and what
# scripts/bench.sh reads. Writes BENCH_DIR/ab.jsonl (one line a run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=${0##*/}
usage() { sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
ROUNDS=3
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    -*) echo "$PROG: unknown option $1 (try --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "$PROG: give BEFORE_BIN [AFTER_BIN] (try --help)" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "$PROG: --rounds takes a whole number" >&2; exit 2; }
BEFORE=$(realpath "$1")
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
# (this tree's binary is built by the first bench.sh run)
AFTER=$(realpath -m "${2:-$TARGET/release/lobby-relay}")
STATE=${BENCH_DIR:-$TARGET/bench-ab}
export BENCH_ONLY=${BENCH_ONLY:-a b d}
mkdir -p "$STATE"
LOG=$STATE/ab.jsonl
: >"$LOG"

for round in $(seq "$ROUNDS"); do
  for side in before after; do
    bin=$BEFORE
    [ $side = after ] && bin=$AFTER
    echo "==> round $round/$ROUNDS: $side ($bin)"
    # The last line bench.sh prints is the headline JSON (its problems too).
    line=$(BENCH_RELAY_BIN=$bin BENCH_DIR=$STATE/$side "$ROOT/scripts/bench.sh" 2>&1 |
      tee "$STATE/$side-$round.log" | tail -n 1) || true
    [[ $line == "{"* ]] || { echo "$PROG: bench.sh failed (see $STATE/$side-$round.log)" >&2; exit 1; }
    echo "$line"
    printf '{"side": "%s", "round": %s, "figures": %s}\n' "$side" "$round" "$line" >>"$LOG"
  done
done

python3 - "$LOG" "$BEFORE" "$AFTER" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
keys = ["saturation_msg_s", "game_cpu_us_per_msg", "game_p99_ms", "memory_kib_per_conn"]
print(f"\nbefore: {sys.argv[2]}\nafter:  {sys.argv[3]}\n")
print(f"| figure | before (runs) | median | after (runs) | median | change |")
print(f"|---|---|---|---|---|---|")
for k in keys:
    side = {s: [r["figures"][k] for r in runs if r["side"] == s and k in r["figures"]] for s in ("before", "after")}
    if not side["before"] or not side["after"]:
        continue
    mb, ma = statistics.median(side["before"]), statistics.median(side["after"])
    change = f"{(ma - mb) / mb * 100:+.1f}%" if mb else "-"
    fmt = lambda xs: ", ".join(f"{x:g}" for x in xs)
    print(f"| {k} | {fmt(side['before'])} | {mb:g} | {fmt(side['after'])} | {ma:g} | {change} |")
bad = [r for r in runs if r["figures"].get("problems")]
for r in bad:
    print(f"problems in {r['side']} round {r['round']}: {r['figures']['problems']}")
sys.exit(1 if bad else 0)
PY
