#!/usr/bin/env bash
# Installs llama.cpp, the reference the parity tests compare against, as
# llama-cpp-python built from source, plus the Python packages the reference
# scripts under tests/scripts use (pins: tests/scripts/requirements-refs.txt).
# Prints the venv's python on stdout (progress goes to stderr):
#
#   SOTTO_LLAMA_PYTHON="$(scripts/llama-deps.sh)"
#
# Why from source with AMX off: ggml is built for this CPU (GGML_NATIVE), and
# on CPUs that advertise AMX while the kernel keeps it disabled a native build
# emits AMX instructions and dies with SIGILL. The wheel is native code, so the
# venv is keyed by everything the build depends on: the pinned requirements,
# the CMake flags, the Python version and this CPU's feature flags. A venv is
# reused only when its stamp carries the same key and it imports with the
# pinned versions; otherwise it is rebuilt from scratch.
#
# Idempotent; ~9 min cold on 2 cores (the ggml build), under a second warm.
# Location: $SOTTO_LLAMA_VENV, else $SOTTO_CACHE (or ~/.cache/sotto)/llama/<key>.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS=tests/scripts/requirements-refs.txt
LLAMA_CPP_PYTHON_VERSION=0.3.36
GGUF_VERSION=0.19.0
AMX_OFF='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
# LLAVA_BUILD=OFF: the multimodal library (mtmd, clip) is loaded only by
# llama-cpp-python's image chat handlers, which no reference script uses; it
# is a sizeable part of the build.
CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DCMAKE_C_FLAGS='$AMX_OFF' -DCMAKE_CXX_FLAGS='$AMX_OFF'"
PY="${PYTHON:-python3}"

grep -qx "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" "$REQUIREMENTS" \
  && grep -qx "gguf==$GGUF_VERSION" "$REQUIREMENTS" \
  || { echo "llama-deps: $REQUIREMENTS does not pin llama-cpp-python $LLAMA_CPP_PYTHON_VERSION and gguf $GGUF_VERSION" >&2; exit 1; }

cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m)"
py_version="$("$PY" -c 'import platform; print(platform.python_version())')"
key="$(printf '%s\n' "$(grep -v '^#' "$REQUIREMENTS")" "$CMAKE_ARGS" "$py_version" "$cpu_flags" \
  | sha256sum | cut -c1-16)"
cache="${SOTTO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sotto}"
venv="${SOTTO_LLAMA_VENV:-$cache/llama/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$key}"
stamp="$venv/.sotto-llama-deps"

# The venv works: the stamp says it was built with this key, and the pinned
# versions import, with the quantizer the quant-parity test needs.
usable() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]] || return 1
  "$venv/bin/python" -s - "$LLAMA_CPP_PYTHON_VERSION" "$GGUF_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
import gguf, jinja2, numpy, llama_cpp, safetensors, tokenizers
assert llama_cpp.__version__ == sys.argv[1], llama_cpp.__version__
assert version("gguf") == sys.argv[2], version("gguf")
assert callable(llama_cpp.llama_model_quantize)
assert "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode()
PY
}

if ! usable; then
  mkdir -p "$(dirname "$venv")"
  # One builder at a time; whoever waited finds the venv ready.
  exec 9>"$venv.lock"
  flock 9
  if ! usable; then
    echo "llama-deps: building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source into $venv (minutes: ggml and llama.cpp compile)" >&2
    start=$SECONDS
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      --no-binary llama-cpp-python -r "$REQUIREMENTS" >&2
    echo "$key" >"$stamp"
    usable || { echo "llama-deps: $venv does not import llama_cpp $LLAMA_CPP_PYTHON_VERSION / gguf $GGUF_VERSION after install" >&2; exit 1; }
    echo "llama-deps: built in $((SECONDS - start)) s" >&2
  fi
  flock -u 9
fi
echo "$venv/bin/python"
