#!/bin/sh
# The llama-cpp-python sdist every strato build of llama.cpp compiles (the dev wheel, the
# AVX-512 libraries, the Lambda layer, the container images): the pinned sdist from PyPI
# with every patches/*.patch beside this script applied in name order (`patch -p1` in
# the sdist's root; each patch says why in its header). The result has the sdist's own
# name, OUT_DIR/llama_cpp_python-VERSION.tar.gz, so `pip wheel`/`pip install` of it build
# the same package and version as the upstream one.
#
# OUT_DIR/llama_cpp_python-VERSION.patches records the sha256 of the patch set; a run
# with the same patches finds it and does nothing. A patch that no longer applies (a
# newer pin that already has the fix) fails the run: drop the patch file then.
#
# Usage: patched-sdist.sh OUT_DIR [VERSION]   (VERSION default: $LLAMA_CPP_VERSION or 0.3.36)
# Environment: PYTHON (pip for the download; default python3), SDIST (an upstream sdist
# already downloaded, instead of pip download). Needs tar, gzip, patch and sha256sum.
# Prints the patched sdist's path on stdout (all else goes to stderr).
set -eu
out="${1:?usage: patched-sdist.sh OUT_DIR [VERSION]}"
version="${2:-${LLAMA_CPP_VERSION:-0.3.36}}"
here="$(cd "$(dirname "$0")" && pwd)"
name="llama_cpp_python-$version"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
# The stamp: each patch's content hash and name, in the order they are applied (empty
# when there is none left: then the result is the upstream sdist).
stamp="$(cd "$here/patches" 2>/dev/null && for p in ./*.patch; do
    if [ -e "$p" ]; then sha256sum "$p"; fi; done || true)"
if [ -e "$out/$name.tar.gz" ] && [ "$(cat "$out/$name.patches" 2>/dev/null)" = "$stamp" ]; then
    echo "$out/$name.tar.gz"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sdist="${SDIST:-}"
if [ -z "$sdist" ]; then
    "${PYTHON:-python3}" -m pip download --quiet --no-cache-dir --no-binary :all: --no-deps \
        --disable-pip-version-check -d "$work" "llama-cpp-python==$version" >&2
    sdist="$work/$name.tar.gz"
fi
mkdir "$work/src"
tar -xzf "$sdist" -C "$work/src"
for p in "$here"/patches/*.patch; do
    [ -e "$p" ] || continue
    echo "patched-sdist.sh: applying $(basename "$p")" >&2
    patch -p1 --forward --batch --quiet -d "$work/src/$name" <"$p" >&2
done
tar -czf "$work/$name.tar.gz" -C "$work/src" "$name"
rm -f "$out/$name.patches"
mv "$work/$name.tar.gz" "$out/$name.tar.gz"
echo "$stamp" >"$out/$name.patches"
echo "$out/$name.tar.gz"
