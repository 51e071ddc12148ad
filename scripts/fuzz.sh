#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer via cargo fuzz) of what clients control:
# the text-frame parser and the passphrase normaliser.
#
#   scripts/fuzz.sh [SECONDS]     each target for SECONDS (default 60)
#
# cargo fuzz needs nightly compiler flags; on a stable toolchain they are
# enabled with RUSTC_BOOTSTRAP=1, for the fuzz build only. New inputs that
# reach new code go to fuzz/corpus/<target>/ (keep it small: `cargo fuzz
# cmin`); a crash is saved under fuzz/artifacts/ and must become a
# regression test in src/protocol.rs or src/passphrase.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
for target in protocol passphrase; do
  echo "==> fuzzing $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -dict=fuzz/json.dict
done
