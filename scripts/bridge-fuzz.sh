#!/usr/bin/env bash
# Runs the bridge's cargo-fuzz targets for a bounded time each (default
# 60 s). Needs a nightly toolchain and cargo-fuzz; without them it runs the
# same target bodies on stable through tests/tests/bridge_fuzz_stable.rs.
set -euo pipefail
SECONDS_PER_TARGET="${1:-60}"
cd "$(dirname "$0")/../bridge/fuzz"
if rustup toolchain list 2>/dev/null | grep -q nightly && cargo +nightly fuzz --version >/dev/null 2>&1; then
  for target in decode_message decrypt; do
    mkdir -p "corpus/$target"
    # Fuzz into a scratch copy so the committed seed corpus stays small.
    work="$(mktemp -d)"
    cp -r "corpus/$target/." "$work/"
    echo "== cargo fuzz run $target (${SECONDS_PER_TARGET}s)"
    cargo +nightly fuzz run "$target" "$work" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048
    rm -rf "$work"
  done
else
  echo "nightly + cargo-fuzz not available: running the target bodies on stable (proptest)"
  cd ../..
  cargo test -p sotto-tests --test bridge_fuzz_stable
fi
