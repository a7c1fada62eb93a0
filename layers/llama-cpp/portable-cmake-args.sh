#!/bin/sh
# The ggml CPU flags of every strato build of llama.cpp (the dev wheel, the Lambda layer,
# the container images, the llama-server the benchmark runs), in one place.
#
# Portable, never -march=native: the build host is not the serving host. x86_64: Lambda
# guarantees AVX2/FMA/F16C; AVX-512 and AMX exist on some hosts only, and such a build
# dies with SIGILL on the others (and a native build crashed in ggml's AMX kernel here).
# arm64: Graviton2 is the floor (ARMv8.2 with dotprod and fp16).
#
# Usage: portable-cmake-args.sh [ARCH]    ARCH: x86_64 / amd64 / aarch64 / arm64,
#                                         default `uname -m`
arch="${1:-$(uname -m)}"
case "$arch" in
    aarch64|arm64)
        echo "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" ;;
    *)
        echo "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \
             "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
esac
