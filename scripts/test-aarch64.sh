#!/usr/bin/env bash
# The aarch64 (phone) kernels, tested on this x86 machine under qemu user mode.
#
# Installs what it needs (idempotent: the rustup target, then the cross
# linker and qemu from Debian only if missing), builds the sotto-kernels tests
# for aarch64-unknown-linux-gnu once, and runs them once per forced path:
#
#   QEMU_CPU=max         SOTTO_ISA=scalar|neon|dotprod|i8mm   (whole crate)
#   QEMU_CPU=cortex-a76  SOTTO_ISA=dotprod                    (no i8mm here)
#   QEMU_CPU=cortex-a53  SOTTO_ISA=neon                       (no dotprod here)
#
# SOTTO_EXPECT_AARCH64 tells the detection test which features the emulated
# CPU must report, so a tier that silently stops being detected fails instead
# of skipping its tests. The two smaller CPUs run only the arch and dispatch
# tests: they exist to prove detection and the lower tiers on CPUs that lack
# the upper ones.
#
# `scripts/test-aarch64.sh build` installs and builds only.
#
# Exits non-zero if anything fails; every run still happens (no fail-fast)
# and a summary of test counts per run is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-aarch64: %s\n' "$*" >&2; exit 1; }

step "toolchain for $TARGET"
if ! rustup target list --installed | grep -x "$TARGET" >/dev/null; then
  rustup target add "$TARGET" || die "rustup target add $TARGET failed"
fi
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" || die "apt-get install ${missing[*]} failed"
fi
[ -d "$SYSROOT" ] || die "$SYSROOT missing (the aarch64 libc that qemu loads)"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L $SYSROOT"

# The kernels are built without overflow and debug (UB) checks for the
# model-driven suites (Cargo.toml); their own tests here keep both on.
checks=(--config profile.dev.package.sotto-kernels.debug-assertions=true
  --config profile.dev.package.sotto-kernels.overflow-checks=true)

step "build sotto-kernels tests for $TARGET"
cargo test -p sotto-kernels --target "$TARGET" "${checks[@]}" --no-run || die "build failed"
# `test-aarch64.sh build`: only the toolchain and the build (scripts/test.sh
# runs it in the background while the workspace tests run).
[ "${1:-}" = build ] && exit 0

log_dir=target/test-aarch64
mkdir -p "$log_dir"
summary=()
failed=0

# run <qemu cpu> <forced isa> <expected features> [test filter]
run() {
  local cpu=$1 isa=$2 expect=$3 filter=${4:-}
  local name="QEMU_CPU=$cpu SOTTO_ISA=$isa${filter:+ (filter: $filter)}"
  local log="$log_dir/$cpu-$isa.log"
  step "$name"
  QEMU_CPU=$cpu SOTTO_ISA=$isa SOTTO_EXPECT_AARCH64=$expect \
    cargo test -p sotto-kernels --target "$TARGET" "${checks[@]}" --no-fail-fast -- $filter 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local passed failed_n
  passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
  failed_n=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
  if [ "$rc" -ne 0 ] || [ "$passed" -eq 0 ]; then
    failed=1
    summary+=("FAIL  $name: $passed passed, $failed_n failed (exit $rc)")
  else
    summary+=("ok    $name: $passed passed")
  fi
}

for isa in scalar neon dotprod i8mm; do
  run max "$isa" neon,dotprod,i8mm
done
# `arch::` and `dispatch::` match the module paths of the detection, table
# and kernel tests.
run cortex-a76 dotprod neon,dotprod "arch:: dispatch::"
run cortex-a53 neon neon "arch:: dispatch::"

step "summary (logs in $log_dir)"
printf '%s\n' "${summary[@]}"
exit "$failed"
