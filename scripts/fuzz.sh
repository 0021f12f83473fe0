#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time each (default 30 s),
# coverage-guided under AddressSanitizer, each from its committed seed
# corpus, which stays small: fuzzing happens in a scratch copy. Crashes land
# in <crate>/fuzz/artifacts/<target>/ and fail the script.
#   bridge/fuzz: decode_message, decrypt (the bridge's wire and session code)
#   models/fuzz: gguf_reader, model_load (the GGUF reader; model loading
#                through the architecture registry, weights and tokenizer;
#                seeds written by models/fuzz/make-corpus.py)
# Both crates build into one target directory (target/fuzz) so the
# dependencies they share are built once.
#
# `scripts/fuzz.sh build` only builds every target (scripts/test.sh runs it
# in the background while the workspace tests leave cores idle); a run
# after it finds them built.
#
# cargo-fuzz is installed from crates.io if missing. It wants nightly for its
# -Z flags; this machine has only stable, so RUSTC_BOOTSTRAP=1 lets stable
# rustc accept them (the sanitizer runtimes ship with stable's rust-std).
set -euo pipefail
build_only=0
if [ "${1:-}" = build ]; then
  build_only=1
  shift
fi
SECONDS_PER_TARGET="${1:-30}"
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
if rustup toolchain list 2>/dev/null | grep nightly >/dev/null; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
target_dir="$root/target/fuzz"
for entry in bridge:decode_message bridge:decrypt models:gguf_reader models:model_load; do
  crate="${entry%%:*}"
  target="${entry#*:}"
  cd "$root/$crate/fuzz"
  start=$SECONDS
  "${fuzz[@]}" build --target-dir "$target_dir" "$target" >/dev/null 2>&1 \
    || "${fuzz[@]}" build --target-dir "$target_dir" "$target"
  if [ "$build_only" = 1 ]; then
    echo "== $crate/fuzz $target: built in $((SECONDS - start)) s"
    continue
  fi
  echo "== $crate/fuzz $target: built in $((SECONDS - start)) s; run ${SECONDS_PER_TARGET} s from $(ls "corpus/$target" | wc -l) seeds"
  work="$(mktemp -d)"
  cp -r "corpus/$target/." "$work/"
  log="$work.log"
  status=0
  "${fuzz[@]}" run --target-dir "$target_dir" "$target" "$work" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
  grep -E '^(Done [0-9]+ runs|==[0-9]+==ERROR|SUMMARY|thread .* panicked|Error:)' "$log" || tail -n 20 "$log"
  grep -E '^#[0-9]+.*(DONE|cov:)' "$log" | tail -n 1 || true
  rm -rf "$work" "$log"
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed (see $crate/fuzz/artifacts/$target)" >&2
    exit 1
  fi
done
