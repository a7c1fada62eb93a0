#!/usr/bin/env bash
# Build the two reference servers that bench/serve.py compares strato with:
#  1. llama.cpp's own `llama-server`, from the llama.cpp sources vendored in the
#     llama-cpp-python sdist that strato pins, so it runs the exact same ggml code,
#     compiled with the same portable CPU flags (a -march=native build crashes in ggml's
#     AMX kernel on these hosts). Output: bench/.build/bin/llama-server.
#  2. a separate venv bench/.build/venv-llama-server-py with `llama-cpp-python[server]`
#     (fastapi, sse-starlette, ...) for `python -m llama_cpp.server`, so strato's own
#     .venv never carries those dependencies. It builds llama-cpp-python from PyPI's sdist
#     with CMAKE_ARGS (not the wheel in .cache/wheels: that one is patched, see below).
#
# Both peers run UPSTREAM code, deliberately unpatched: strato builds llama.cpp with its
# own patch set (layers/llama-cpp/patches, e.g. a faster model load), and the benchmark
# measures strato against what a user of llama.cpp / llama-cpp-python gets, so what the
# patches gain shows up as strato's gain. Same sources otherwise, same CPU flags.
#
# CPU flags: $CMAKE_ARGS if set, else the Makefile's CMAKE_ARGS, so all three builds of
# ggml (strato's, llama_cpp.server's, llama-server's) agree. A stamp file records the flags
# a binary was built with; other flags rebuild it (an AVX-512 build SIGILLs on AVX2 hosts).
#
# Usage: bench/build_llama_server.sh            (idempotent: skips work already done)
#        JOBS=4 bench/build_llama_server.sh     (default -j2: the dev box has 2 cores)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BUILD="$HERE/.build"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PORTABLE="${CMAKE_ARGS:-$(sh "$ROOT/layers/llama-cpp/portable-cmake-args.sh")}"
echo "ggml flags: $PORTABLE"

mkdir -p "$BUILD"
SDIST_DIR="$BUILD/sdist"
SRC="$BUILD/llama_cpp_python-$VERSION"
BIN="$BUILD/bin/llama-server"
VENV="$BUILD/venv-llama-server-py"

STAMP="$BIN.flags"
if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$PORTABLE" ]; then
  echo "llama-server already built with these flags: $BIN"
else
  if [ ! -d "$SRC" ]; then
    mkdir -p "$SDIST_DIR"
    "$PY" -m pip download --no-binary :all: --no-deps -d "$SDIST_DIR" \
      "llama-cpp-python==$VERSION"
    tar -xzf "$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz" -C "$BUILD"
  fi
  LLAMA="$SRC/vendor/llama.cpp"
  [ -f "$LLAMA/CMakeLists.txt" ] || { echo "no vendored llama.cpp in $SRC" >&2; exit 1; }
  # shellcheck disable=SC2086  # PORTABLE is a list of flags
  rm -rf "$BUILD/cmake"  # objects built with other flags must not be linked in
  cmake -S "$LLAMA" -B "$BUILD/cmake" -DCMAKE_BUILD_TYPE=Release $PORTABLE \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF
  cmake --build "$BUILD/cmake" --config Release --target llama-server -j "$JOBS"
  mkdir -p "$BUILD/bin"
  cp "$BUILD/cmake/bin/llama-server" "$BIN"
  echo "$PORTABLE" > "$STAMP"
  echo "built $BIN"
fi

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp.server.app" 2>/dev/null; then
  echo "llama_cpp.server venv ready: $VENV"
else
  python3 -m venv "$VENV"
  # --no-cache-dir: pip's cache keys sdist builds by URL, not by CMAKE_ARGS, and could
  # hand back a wheel built with other flags.
  CMAKE_ARGS="$PORTABLE" "$VENV/bin/pip" install --no-cache-dir \
    "llama-cpp-python[server]==$VERSION"
  "$VENV/bin/python" -c "import llama_cpp.server.app"
  echo "llama_cpp.server venv ready: $VENV"
fi
