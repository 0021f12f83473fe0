#!/usr/bin/env bash
# Fetches the ONNX Runtime libraries the `ort` backend loads at run time:
# onnxruntime 1.31.1 (the runtime) and onnxruntime-qnn 2.7.0 (Qualcomm's QNN
# execution provider as a plugin EP library, with the HTP emulator for x86-64).
# Both wheels install into one --target dir: onnxruntime-qnn declares
# `onnxruntime>=1.24.2`, so pinning 1.31.1 satisfies it and they coexist.
# Also installs, into their own --target dir ($ORT_DIR/onnx-tools), the Python
# packages tests/scripts/foreign_onnx_llama.py builds a "foreign" ONNX export
# with (onnx, gguf, numpy; no torch) for tests/tests/ort_foreign.rs.
# Idempotent: a second run only prints the paths.
#
# Prints (and writes to $ORT_DIR/paths.env) the three libraries:
#   ORT_DYLIB_PATH=.../libonnxruntime.so.1.31.1
#   ORT_QNN_EP_PATH=.../libonnxruntime_providers_qnn.so
#   ORT_QNN_BACKEND_PATH=.../libQnnHtp.so
set -euo pipefail

ORT_VERSION=1.31.1
QNN_VERSION=2.7.0
# the user cache as the engine resolves it (engine/src/ort/runtime.rs)
ORT_DIR="${SOTTO_ORT_DIR:-${SOTTO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sotto}/ort}"
SITE="$ORT_DIR/site-packages"
PY="${PYTHON:-python3}"

runtime="$SITE/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
qnn_ep="$SITE/onnxruntime_qnn/libonnxruntime_providers_qnn.so"
qnn_htp="$SITE/onnxruntime_qnn/libQnnHtp.so"

installed_version() { # $1 = distribution name
    ls -d "$SITE/$1-"*.dist-info 2>/dev/null | sed -nE "1s#.*/$1-([^/]*)\.dist-info#\1#p"
}

if [[ "$(installed_version onnxruntime)" != "$ORT_VERSION" \
   || "$(installed_version onnxruntime_qnn)" != "$QNN_VERSION" \
   || ! -f "$runtime" || ! -f "$qnn_ep" || ! -f "$qnn_htp" ]]; then
    mkdir -p "$SITE"
    # --upgrade replaces a stale version inside the target dir.
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade --target "$SITE" \
        "onnxruntime==$ORT_VERSION" "onnxruntime-qnn==$QNN_VERSION" >&2
fi

ONNX_VERSION=1.23.2
GGUF_VERSION=0.19.0
TOOLS="$ORT_DIR/onnx-tools"
tools_ok() {
    PYTHONPATH="$TOOLS" "$PY" -s -c "import sys, onnx, gguf, numpy; from importlib.metadata import version; \
sys.exit(0 if (onnx.__version__, version('gguf')) == ('$ONNX_VERSION', '$GGUF_VERSION') else 1)" 2>/dev/null
}
if ! tools_ok; then
    mkdir -p "$TOOLS"
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade --target "$TOOLS" \
        "onnx==$ONNX_VERSION" "gguf==$GGUF_VERSION" numpy >&2
    tools_ok || { echo "ort-deps: onnx $ONNX_VERSION / gguf $GGUF_VERSION not importable from $TOOLS" >&2; exit 1; }
fi

for f in "$runtime" "$qnn_ep" "$qnn_htp"; do
    [[ -f "$f" ]] || { echo "ort-deps: missing $f after install" >&2; exit 1; }
done

cat > "$ORT_DIR/paths.env" <<PATHS
ORT_DYLIB_PATH=$runtime
ORT_QNN_EP_PATH=$qnn_ep
ORT_QNN_BACKEND_PATH=$qnn_htp
PATHS
cat "$ORT_DIR/paths.env"
echo "# python: PYTHONPATH=$SITE" >&2
echo "# foreign-export tools (onnx, gguf): PYTHONPATH=$TOOLS" >&2
