#!/usr/bin/env bash
# Installs the bridge's two live interop peers, each run as a separate
# process by the tests and never linked or vendored. Idempotent.
#  - python-axolotl 0.2.3 (GPL), for tests/peer/axolotl_peer.py;
#  - Signal's libsignal, npm @signalapp/libsignal-client 0.72.1 (the last
#    release accepting version-3 sessions; AGPL, prebuilt native module
#    inside the npm package), for tests/peer/libsignal_peer.mjs, installed
#    into a cache directory ($SOTTO_LIBSIGNAL_DIR, default npm/ in the
#    user cache: $SOTTO_CACHE, else $XDG_CACHE_HOME/sotto, else
#    ~/.cache/sotto) that the tests read the same way.
set -euo pipefail
PY="${SOTTO_PYTHON:-python3}"
if "$PY" -c 'import axolotl, google.protobuf, sys; from importlib.metadata import version; sys.exit(0 if version("python-axolotl") == "0.2.3" else 1)' 2>/dev/null; then
  echo "python-axolotl 0.2.3 already installed"
else
  # protobuf is pinned: newer ones cannot import axolotl's generated modules.
  "$PY" -m pip install --quiet --disable-pip-version-check "python-axolotl==0.2.3" "protobuf==3.20.3"
  "$PY" -c 'import axolotl, google.protobuf; print("python-axolotl ready, protobuf", google.protobuf.__version__)'
fi

LIBSIGNAL_VERSION=0.72.1
# the user cache as the tests resolve it (tests/src/bridge_peer.rs)
LIBSIGNAL_DIR="${SOTTO_LIBSIGNAL_DIR:-${SOTTO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sotto}/npm}"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
# Loads the native module too, so a half-finished install is redone.
libsignal_ready() {
  (cd "$LIBSIGNAL_DIR" 2>/dev/null && node -e "
    const v = require('@signalapp/libsignal-client/package.json').version;
    require('@signalapp/libsignal-client').PrivateKey.generate();
    process.exit(v === '$LIBSIGNAL_VERSION' ? 0 : 1);" 2>/dev/null)
}
if libsignal_ready; then
  echo "libsignal-client $LIBSIGNAL_VERSION already installed in $LIBSIGNAL_DIR"
else
  mkdir -p "$LIBSIGNAL_DIR"
  [ -f "$LIBSIGNAL_DIR/package.json" ] || echo '{"private": true}' >"$LIBSIGNAL_DIR/package.json"
  # --ignore-scripts: its install script only prints a hint; the prebuilt
  # module ships in the package.
  npm install --prefix "$LIBSIGNAL_DIR" --no-audit --no-fund --ignore-scripts --save-exact \
    "@signalapp/libsignal-client@$LIBSIGNAL_VERSION"
  libsignal_ready || { echo "libsignal-client $LIBSIGNAL_VERSION does not load from $LIBSIGNAL_DIR" >&2; exit 1; }
  echo "libsignal-client $LIBSIGNAL_VERSION ready in $LIBSIGNAL_DIR"
fi
