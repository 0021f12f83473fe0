#!/usr/bin/env bash
# The C ABI (tools/ffi) from the outside, as apps use it:
#   1. the C tests (tools/ffi/tests/c) compiled with the system cc against
#      target/debug/libsotto.a and run, the C examples (streaming chat; the
#      bridge example is driven by the C tests) against libsotto.so, and the
#      Java test through JNI (System.loadLibrary on target/debug). That
#      library is the one `cargo test --workspace --all-features` builds (test
#      profile, features jni + ort + panic-probe): the same command is
#      re-run with --no-run, a no-op after the workspace tests;
#   2. the same C tests built with -fsanitize=address against that same,
#      uninstrumented libsotto.so (see asan_tests for what this covers);
#   3. the phone static libraries, aarch64-linux-android (with the JNI
#      entry points) and aarch64-apple-ios, built as staticlib only in the
#      lean `ffi-phone` profile (no NDK or Xcode: a static library needs no
#      linker);
#   4. the C tests cross-built for aarch64-unknown-linux-gnu (profile
#      `ffi-qemu`: the generation path optimized, the rest not) and run
#      under qemu user mode (QEMU_CPU=max) on a subset that keeps emulated
#      model work small.
# Installs what it needs (rustup targets; the cross gcc, qemu and the JDK
# from Debian, as scripts/test-aarch64.sh; python-axolotl from
# scripts/bridge-peer-deps.sh) and the default model. Every step runs; prints
# each step's seconds; exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-ffi: %s\n' "$*" >&2; exit 1; }

SOTTO_MODEL="${SOTTO_MODEL:-$(cargo run -q -p sotto --bin sotto -- fetch)}" || die "fetching the default model failed"
export SOTTO_MODEL
SOTTO_PYTHON="${SOTTO_PYTHON:-python3}"
export SOTTO_PYTHON
export SOTTO_AXOLOTL_PEER="$PWD/tests/peer/axolotl_peer.py"

HOST_LIB=target/debug
ARM=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
PHONES=(aarch64-linux-android aarch64-apple-ios)
OUT=target/ffi
mkdir -p "$OUT"
CFLAGS=(-std=c11 -Wall -Wextra -Werror -O1 -g -I tools/ffi/include -I tools/ffi/examples/c)
LIBS=(-lpthread -ldl -lm)
# The native C tests link the static library (what iOS apps and Android JNI
# libraries link); the examples and the ASan builds link the shared one: a
# static link reads the whole ~400 MB debug archive (~30 s each on a loaded
# 2-core machine), a dynamic one takes a second.
STATIC=("$HOST_LIB/libsotto.a" "${LIBS[@]}")
SHARED=(-L "$HOST_LIB" -Wl,-rpath,"$PWD/$HOST_LIB" -lsotto)
# Under qemu: the chat half on the real model, every error path, the panic
# probe. The bridge's protocol code is the same on every ISA and runs in
# full natively and under ASan.
QEMU_TESTS=version,missing_file,bad_model,bad_arguments,france_streamed,context_overflow,panic_becomes_a_code

step "toolchains"
for t in "$ARM" "${PHONES[@]}"; do
  rustup target list --installed | grep -x "$t" >/dev/null || rustup target add "$t" || die "rustup target add $t failed"
done
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" || die "apt-get install ${missing[*]} failed"
fi
[ -x scripts/bridge-peer-deps.sh ] && { scripts/bridge-peer-deps.sh || die "python-axolotl install failed"; }

summary=()
failed=0
# check <name> <command...>: runs it, records the outcome and its seconds.
check() {
  local name=$1
  shift
  step "$name"
  local t0=$SECONDS
  if "$@"; then
    summary+=("ok    $name ($((SECONDS - t0)) s)")
  else
    failed=1
    summary+=("FAIL  $name ($((SECONDS - t0)) s)")
  fi
}

# A static library only (no cdylib: it would need the target's linker) for
# <target> in <profile>; prints its path.
staticlib() {
  local target=$1 profile=$2 features=$3
  cargo rustc -q -p sotto-ffi --lib --profile "$profile" --target "$target" --features "$features" \
    --crate-type staticlib >&2 &&
    ls -l "target/$target/$profile/libsotto.a" >&2 &&
    echo "target/$target/$profile/libsotto.a"
}

host_build() {
  # The library itself: `cargo test --workspace` builds the crate only as
  # an rlib for its tests (no libsotto.a/.so), so it is built here, in the
  # test profile, whose dependencies the workspace tests already built.
  cargo build -q -p sotto-ffi --lib --profile test --features jni,panic-probe &&
    ls -l "$HOST_LIB/libsotto.a" "$HOST_LIB/libsotto.so"
}
c_tests() {
  cc "${CFLAGS[@]}" tools/ffi/examples/c/bridge.c "${SHARED[@]}" -o "$OUT/bridge" &&
    cc "${CFLAGS[@]}" tools/ffi/tests/c/test_sotto.c "${STATIC[@]}" -o "$OUT/test_sotto" &&
    SOTTO_BRIDGE_EXAMPLE="$OUT/bridge" SOTTO_EXPECT_PANIC_PROBE=1 "$OUT/test_sotto"
}
c_example() {
  cc "${CFLAGS[@]}" tools/ffi/examples/c/chat.c "${SHARED[@]}" -o "$OUT/chat" &&
    "$OUT/chat" "$SOTTO_MODEL" "What is the capital of France?" | tee "$OUT/chat.out" &&
    grep -qx "The capital of France is Paris." "$OUT/chat.out"
}
java_tests() {
  rm -rf "$OUT/java" &&
    javac -Xlint:all -Werror -d "$OUT/java" tools/ffi/java/org/sotto/*.java tools/ffi/tests/java/*.java \
      tools/ffi/examples/java/*.java &&
    java -Xcheck:jni -Djava.library.path="$HOST_LIB" -cp "$OUT/java" SottoTest
}
asan_tests() {
  # Only the C side is instrumented; the Rust library is the host build
  # above, unchanged (no second Rust build), loaded as libsotto.so. The ASan runtime replaces
  # malloc/free for the whole process, and Rust allocates through them, so
  # this catches what a C caller does wrong across the boundary: reading
  # or writing past a buffer the library handed out (reply bodies, strings),
  # using it after sotto_string_free / sotto_*_free, freeing it twice or
  # with the wrong function, and leaks of library allocations at exit
  # (LeakSanitizer). It does not see out-of-bounds accesses made inside the
  # Rust code itself (uninstrumented), which safe Rust rules out and the
  # kernels' unsafe code is tested for by its own suites.
  cc "${CFLAGS[@]}" -fsanitize=address -fno-omit-frame-pointer tools/ffi/tests/c/test_sotto.c \
    "${SHARED[@]}" -o "$OUT/test_sotto_asan" &&
    cc "${CFLAGS[@]}" -fsanitize=address -fno-omit-frame-pointer tools/ffi/examples/c/bridge.c \
      "${SHARED[@]}" -o "$OUT/bridge_asan" &&
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 SOTTO_BRIDGE_EXAMPLE="$OUT/bridge_asan" \
      SOTTO_EXPECT_PANIC_PROBE=1 "$OUT/test_sotto_asan" &&
    asan_is_live
}
# A planted double free of a library string must be reported, or the run
# above proves nothing.
asan_is_live() {
  cc "${CFLAGS[@]}" -fsanitize=address -fno-omit-frame-pointer tools/ffi/tests/c/asan_canary.c \
    "${SHARED[@]}" -o "$OUT/asan_canary" || return 1
  if ASAN_OPTIONS=abort_on_error=1 "$OUT/asan_canary" >"$OUT/asan_canary.log" 2>&1; then
    echo "asan_canary: the planted double free went unnoticed" >&2
    return 1
  fi
  grep -m1 "ERROR: AddressSanitizer" "$OUT/asan_canary.log" ||
    { cat "$OUT/asan_canary.log" >&2; return 1; }
}
phone_libs() {
  local ok=0
  staticlib aarch64-linux-android ffi-phone jni >/dev/null || ok=1
  staticlib aarch64-apple-ios ffi-phone "" >/dev/null || ok=1
  return $ok
}
qemu_tests() {
  local lib
  lib=$(staticlib "$ARM" ffi-qemu panic-probe) &&
    aarch64-linux-gnu-gcc "${CFLAGS[@]}" tools/ffi/tests/c/test_sotto.c "$lib" "${LIBS[@]}" \
      -o "$OUT/test_sotto_aarch64" &&
    QEMU_CPU=max SOTTO_EXPECT_PANIC_PROBE=1 SOTTO_C_TESTS="$QEMU_TESTS" \
      qemu-aarch64-static -L "$SYSROOT" "$OUT/test_sotto_aarch64"
}

# `test-ffi.sh build`: only the toolchains and the cross-built libraries
# (phones, aarch64 for qemu), which have target directories of their own;
# scripts/test.sh runs it in the background while the workspace tests run
# (the host library waits for them: it shares their target directory).
if [ "${1:-}" = build ]; then
  phone_libs && staticlib "$ARM" ffi-qemu panic-probe >/dev/null
  exit $?
fi

if check "libsotto for $(uname -m) (test profile, jni + panic-probe)" host_build; then
  check "C tests (native)" c_tests
  check "C example: streaming chat" c_example
  check "Java tests through JNI" java_tests
  check "C tests under AddressSanitizer (C side instrumented)" asan_tests
fi
check "phone static libraries (${PHONES[*]})" phone_libs
check "C tests on $ARM under qemu ($QEMU_TESTS)" qemu_tests

step "summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
