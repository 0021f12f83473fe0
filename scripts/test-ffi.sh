#!/usr/bin/env bash
# The C ABI (tools/ffi) from the outside, as apps use it:
#   1. libsotto built once for this machine (test profile, features jni and
#      panic-probe), the C tests (tools/ffi/tests/c) compiled with the system
#      cc against its static library and run, and the C example run;
#   2. the Java classes and their test through JNI (System.loadLibrary on
#      the same build; the bridge round trip has python-axolotl as the peer);
#   3. the C tests again against a build instrumented with AddressSanitizer
#      (Rust and C both; stable rustc with RUSTC_BOOTSTRAP for -Zsanitizer);
#   4. the phone static libraries: aarch64-linux-android (with the JNI
#      entry points) and aarch64-apple-ios, built without NDK or Xcode (a
#      static library needs no linker);
#   5. the C tests cross-built for aarch64-unknown-linux-gnu and run under
#      qemu user mode (QEMU_CPU=max).
# Installs what it needs (rustup targets; the cross gcc and qemu from Debian,
# as scripts/test-aarch64.sh; python-axolotl from scripts/bridge-peer-deps.sh)
# and the default model. Every step runs; exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-ffi: %s\n' "$*" >&2; exit 1; }

SOTTO_MODEL="${SOTTO_MODEL:-$(cargo run -q -p sotto --bin sotto -- fetch)}" || die "fetching the default model failed"
export SOTTO_MODEL

HOST=x86_64-unknown-linux-gnu
ARM=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
PHONES=(aarch64-linux-android aarch64-apple-ios)
OUT=target/ffi
mkdir -p "$OUT"
CFLAGS=(-std=c11 -Wall -Wextra -Werror -O1 -g -I tools/ffi/include)
LIBS=(-lpthread -ldl -lm)

step "toolchains"
for t in "$ARM" "${PHONES[@]}"; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t" || die "rustup target add $t failed"
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
# check <name> <command...>: runs it, records the outcome.
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

# A static library for <target> (no linker: fine for phone targets).
staticlib() {
  local target=$1 features=$2
  shift 2
  cargo rustc -q -p sotto-ffi --lib --profile test --target "$target" --features "$features" \
    --crate-type staticlib "$@"
}

host_build() {
  cargo build -q -p sotto-ffi --profile test --features jni,panic-probe
}
c_tests() {
  cc "${CFLAGS[@]}" tools/ffi/tests/c/test_sotto.c target/debug/libsotto.a "${LIBS[@]}" \
    -o "$OUT/test_sotto" &&
    SOTTO_EXPECT_PANIC_PROBE=1 "$OUT/test_sotto"
}
c_example() {
  cc "${CFLAGS[@]}" tools/ffi/examples/c/chat.c target/debug/libsotto.a "${LIBS[@]}" -o "$OUT/chat" &&
    "$OUT/chat" "$SOTTO_MODEL" "What is the capital of France?" | tee "$OUT/chat.out" &&
    grep -qx "The capital of France is Paris." "$OUT/chat.out"
}
java_tests() {
  rm -rf "$OUT/java" &&
    javac -Xlint:all -Werror -d "$OUT/java" tools/ffi/java/org/sotto/*.java tools/ffi/tests/java/*.java \
      tools/ffi/examples/java/*.java &&
    java -Xcheck:jni -Djava.library.path=target/debug -cp "$OUT/java" SottoTest
}
asan_tests() {
  # Its own target dir: every crate is instrumented, build scripts are not
  # (hence --target).
  RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" \
    cargo build -q -p sotto-ffi --profile test --features panic-probe --target "$HOST" \
    --target-dir target/ffi-asan &&
    cc "${CFLAGS[@]}" -fsanitize=address -fno-omit-frame-pointer tools/ffi/tests/c/test_sotto.c \
      "target/ffi-asan/$HOST/debug/libsotto.a" "${LIBS[@]}" -o "$OUT/test_sotto_asan" &&
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 SOTTO_EXPECT_PANIC_PROBE=1 "$OUT/test_sotto_asan"
}
phone_libs() {
  local t ok=0
  staticlib aarch64-linux-android jni || ok=1
  staticlib aarch64-apple-ios "" || ok=1
  for t in "${PHONES[@]}"; do
    ls -l "target/$t/debug/libsotto.a" || ok=1
  done
  return $ok
}
qemu_tests() {
  staticlib "$ARM" panic-probe &&
    aarch64-linux-gnu-gcc "${CFLAGS[@]}" tools/ffi/tests/c/test_sotto.c "target/$ARM/debug/libsotto.a" \
      "${LIBS[@]}" -o "$OUT/test_sotto_aarch64" &&
    QEMU_CPU=max SOTTO_EXPECT_PANIC_PROBE=1 qemu-aarch64-static -L "$SYSROOT" "$OUT/test_sotto_aarch64"
}

if check "build libsotto ($HOST, jni + panic-probe)" host_build; then
  check "C tests (native)" c_tests
  check "C example: streaming chat" c_example
  check "Java tests through JNI" java_tests
fi
check "C tests under AddressSanitizer" asan_tests
check "phone static libraries (${PHONES[*]})" phone_libs
check "C tests on $ARM under qemu" qemu_tests

step "summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
