#!/usr/bin/env bash
# Installs the python-axolotl 0.2.3 interop peer (GPL; run as a separate
# process by tests/tests/bridge_axolotl.rs, never linked). Idempotent.
set -euo pipefail
PY="${SOTTO_PYTHON:-python3}"
if "$PY" -c 'import axolotl, google.protobuf, sys; from importlib.metadata import version; sys.exit(0 if version("python-axolotl") == "0.2.3" else 1)' 2>/dev/null; then
  echo "python-axolotl 0.2.3 already installed"
  exit 0
fi
# protobuf is pinned: newer ones cannot import axolotl's generated modules.
"$PY" -m pip install --quiet --disable-pip-version-check "python-axolotl==0.2.3" "protobuf==3.20.3"
"$PY" -c 'import axolotl, google.protobuf; print("python-axolotl ready, protobuf", google.protobuf.__version__)'
