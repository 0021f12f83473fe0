#!/usr/bin/env bash
# The bridge soak for as long as asked (default ten minutes): 64 interleaved
# conversations, python-axolotl and libsignal peers, forged, resent and
# replayed envelopes, on the real default model, round after round (at
# least two); prints messages handled, errors by kind and the server's
# memory (tools/tests/bridge_soak.rs; the test command runs it for one
# round).
#   scripts/bridge-soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bridge-peer-deps.sh
SOTTO_MODEL="${SOTTO_MODEL:-$(cargo run -q -p sotto --bin sotto -- fetch)}"
export SOTTO_MODEL
SOTTO_SOAK_SECONDS="${1:-600}" cargo test -p sotto --test bridge_soak -- --nocapture
