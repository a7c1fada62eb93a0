#!/bin/sh
# Build llama.cpp's shared libraries (libllama, libggml, libggml-base, libggml-cpu) a
# second time, with the AVX-512 flags of portable-cmake-args.sh, from the llama.cpp that
# the pinned llama-cpp-python sdist vendors, with strato's patches (patched-sdist.sh):
# the same sources as the portable wheel, so the two sets are interchangeable behind
# llama_cpp's ctypes bindings. Only the library targets are built (no tools, no mtmd):
# about half of a wheel build.
#
# The result, OUT_DIR/lib*.so* (RUNPATH $ORIGIN, so they load each other and never the
# wheel's), is what core/engine/cpu_variant.py points LLAMA_CPP_LIB_PATH at on CPUs that
# have every AVX-512 feature the build uses. OUT_DIR/.flags records version, patch set
# and flags; a build with the same ones is skipped.
#
# Usage: build-avx512-libs.sh OUT_DIR
# Environment: PYTHON (pip for the sdist download; default python3), LLAMA_CPP_VERSION
# (default 0.3.36), EXTRA_CMAKE_ARGS (e.g. -DGGML_OPENMP=OFF: match the wheel's build),
# CMAKE_BUILD_PARALLEL_LEVEL (default nproc), SDIST (the patched sdist patched-sdist.sh
# made; without it this script makes one).
# Needs a C/C++ toolchain, make, tar, patch and strip; cmake comes from PyPI where it is
# missing.
set -eu
out="${1:?usage: build-avx512-libs.sh OUT_DIR}"
here="$(cd "$(dirname "$0")" && pwd)"
version="${LLAMA_CPP_VERSION:-0.3.36}"
flags="$(sh "$here/portable-cmake-args.sh" x86_64 avx512)${EXTRA_CMAKE_ARGS:+ $EXTRA_CMAKE_ARGS}"
patches="$({ cd "$here/patches" && sha256sum ./*.patch; } 2>/dev/null | sha256sum | cut -c1-16)"
stamp="llama-cpp-python==$version patches:$patches $flags"
if [ -e "$out/libllama.so" ] && [ "$(cat "$out/.flags" 2>/dev/null)" = "$stamp" ]; then
    echo "AVX-512 llama.cpp libraries already built: $out"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sdist="${SDIST:-}"
if [ -z "$sdist" ]; then
    sdist="$(sh "$here/patched-sdist.sh" "$work" "$version")"
fi
tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
# Build images without a system cmake (python:slim, SAM's) get the one pip would fetch
# for the wheel build anyway.
if ! command -v cmake >/dev/null 2>&1; then
    "${PYTHON:-python3}" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
        --target "$work/cmake" "cmake>=3.21,<4"
    cmake() { PYTHONPATH="$work/cmake" "$work/cmake/bin/cmake" "$@"; }
fi

# $flags is a list of -D arguments; $ORIGIN is for the loader, not the shell.
# shellcheck disable=SC2086,SC2016
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF \
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' \
    $flags >"$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" --target llama \
    --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"

rm -rf "$out" && mkdir -p "$out"
cp -P "$work/build/bin"/lib*.so* "$out/"
strip --strip-unneeded "$out"/lib*.so.*.* 2>/dev/null || true
echo "$stamp" > "$out/.flags"
ls -l "$out"
