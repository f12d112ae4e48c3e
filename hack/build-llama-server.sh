#!/usr/bin/env bash
# Builds (once) llama.cpp's own `llama-server` and `llama-batched-bench` from the llama.cpp that
# llama-cpp-python vendors, with the runtime's flags, so benchmarks/runtime_bench.py can compare
# our continuous batching against llama.cpp's on the same code and the same machine.
# Benchmark tooling only: CI and the images never run it.
#
# The source is llama-cpp-python's sdist (its vendor/llama.cpp is exactly the llama.cpp our wheel
# links); the flags are hack/build-llama-wheel.sh's (GGML_NATIVE=off: portable, no AMX code).
#
#   SLM_CACHE_DIR=/path   where the cache lives (default ~/.cache/slm-operator)
#   PYTHON=python3        the interpreter whose pip downloads the sdist
#   NICE=10               niceness of the compile (the machine is shared)
#
# Prints the folder holding bin/llama-server and bin/llama-batched-bench as its last line. They load
# llama.cpp's shared libraries from that same bin/ folder: run them with LD_LIBRARY_PATH=<folder>/bin
# (benchmarks/runtime_bench.py does).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=off -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF"
PYTHON=${PYTHON:-python3}
NICE=${NICE:-10}

log() { printf '[llama-server %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

flags_id=$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-8)
OUT=${SLM_CACHE_DIR:-$HOME/.cache/slm-operator}/llama-server/$LLAMA_CPP_PYTHON_VERSION-$flags_id

mkdir -p "$OUT"
# One compile at a time: a second caller waits for the first and then reuses its binaries.
exec 9>"$OUT.lock"
flock 9
if [ -x "$OUT/bin/llama-server" ] && [ -x "$OUT/bin/llama-batched-bench" ]; then
  log "cached: $OUT"
  echo "$OUT"; exit 0
fi

for tool in cmake g++ make; do
  command -v "$tool" >/dev/null || { log "error: $tool is required to compile llama.cpp (apt-get install cmake g++ make)"; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist"
"$PYTHON" -m pip download --no-deps --no-binary :all: --progress-bar off -d "$tmp" \
  "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
tar -xzf "$tmp"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz -C "$tmp"
src="$tmp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { log "error: the sdist has no vendor/llama.cpp"; exit 1; }

log "compiling llama-server and llama-batched-bench with '$LLAMA_CMAKE_ARGS' (nice $NICE; several minutes on 2 cores)"
started=$(date +%s)
# shellcheck disable=SC2086  # the flags are words on purpose
nice -n "$NICE" cmake -S "$src" -B "$tmp/build" $LLAMA_CMAKE_ARGS -DLLAMA_BUILD_TESTS=OFF >&2
nice -n "$NICE" cmake --build "$tmp/build" --parallel "$(nproc)" \
  --target llama-server llama-batched-bench >&2
mkdir -p "$OUT/bin"
# The binaries link libllama/libggml as shared libraries next to them; keep them all together.
find "$tmp/build/bin" -maxdepth 1 \( -name 'llama-server' -o -name 'llama-batched-bench' -o -name '*.so*' \) \
  -exec cp -a {} "$OUT/bin/" \;
printf '%s\n' "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION vendor/llama.cpp" "$LLAMA_CMAKE_ARGS" >"$OUT/BUILD_INFO"
log "done in $(( $(date +%s) - started ))s: $OUT"
echo "$OUT"
