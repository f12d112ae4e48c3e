#!/usr/bin/env bash
# Builds (once) the llama-cpp-python wheel with the project's llama.cpp flags into a
# cache outside the repository, so the dev venv, CI and the runtime image all run the
# same build and llama.cpp is compiled once per machine.
#
# The flags are the Dockerfile's: GGML_NATIVE=off gives a portable AVX2 build with no
# AMX code. Debian's GCC 12 miscompiles llama.cpp's AMX tile configuration, and a
# native build on an AMX CPU segfaults on the first decode of any Q4/Q8 model.
#
#   SLM_CACHE_DIR=/path   where the cache lives (default ~/.cache/slm-operator)
#   PYTHON=python3.11     the interpreter the wheel is built for
#
# Prints the folder holding the wheel as its last line.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=off"
PYTHON=${PYTHON:-python3}

log() { printf '[llama-wheel %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

pytag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
flags_id=$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-8)
OUT=${SLM_CACHE_DIR:-$HOME/.cache/slm-operator}/wheels/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$pytag-$flags_id

mkdir -p "$OUT"
# One compile at a time: a second caller waits for the first and then reuses its wheel.
exec 9>"$OUT.lock"
flock 9
shopt -s nullglob
existing=("$OUT"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl)
if [ ${#existing[@]} -gt 0 ]; then
  log "cached: ${existing[0]}"
  echo "$OUT"; exit 0
fi

for tool in cmake g++ make; do
  command -v "$tool" >/dev/null || { log "error: $tool is required to compile llama.cpp (apt-get install cmake g++ make)"; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "compiling llama-cpp-python $LLAMA_CPP_PYTHON_VERSION with CMAKE_ARGS='$LLAMA_CMAKE_ARGS' (about 10 minutes on 2 cores)"
started=$(date +%s)
# --no-cache-dir: a wheel that pip cached from an earlier build with other flags must not be reused.
CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  "$PYTHON" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
  --progress-bar off -w "$tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
mv "$tmp"/llama_cpp_python-*.whl "$OUT"/
log "done in $(( $(date +%s) - started ))s: $OUT"
echo "$OUT"
