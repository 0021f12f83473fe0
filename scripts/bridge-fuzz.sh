#!/usr/bin/env bash
# Runs the bridge's cargo-fuzz targets (decode_message, decrypt) for a
# bounded time each (default 30 s), coverage-guided under AddressSanitizer,
# starting from the committed seed corpus (bridge/fuzz/corpus), which stays
# small: fuzzing happens in a scratch copy. Crashes land in
# bridge/fuzz/artifacts/<target>/ and fail the script.
#
# cargo-fuzz is installed from crates.io if missing. It wants nightly for its
# -Z flags; this machine has only stable, so RUSTC_BOOTSTRAP=1 lets stable
# rustc accept them (the sanitizer runtimes ship with stable's rust-std).
set -euo pipefail
SECONDS_PER_TARGET="${1:-30}"
cd "$(dirname "$0")/../bridge/fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
if rustup toolchain list 2>/dev/null | grep -q nightly; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
for target in decode_message decrypt; do
  work="$(mktemp -d)"
  cp -r "corpus/$target/." "$work/"
  echo "== cargo fuzz run $target (${SECONDS_PER_TARGET}s, seeds: $(ls "corpus/$target" | wc -l))"
  log="$work.log"
  status=0
  "${fuzz[@]}" run "$target" "$work" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  grep -E '^(Done [0-9]+ runs|==[0-9]+==ERROR|SUMMARY|thread .* panicked|Error:)' "$log" || tail -n 20 "$log"
  rm -rf "$work" "$log"
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed (see bridge/fuzz/artifacts/$target)" >&2
    exit 1
  fi
done
