#!/bin/sh
# The ggml CPU flags of every strato build of llama.cpp (the dev wheel, the Lambda layer,
# the container images, the llama-server the benchmark runs), in one place.
#
# Portable, never -march=native: the build host is not the serving host. x86_64: Lambda
# guarantees AVX2/FMA/F16C; AVX-512 and AMX exist on some hosts only, and such a build
# dies with SIGILL on the others (and a native build crashed in ggml's AMX kernel here).
# arm64: Graviton2 is the floor (ARMv8.2 with dotprod and fp16).
#
# VARIANT avx512 (x86_64 only) is the second, faster set of libraries that
# build-avx512-libs.sh builds beside the portable wheel; core/engine/cpu_variant.py loads
# it only where the CPU has every feature in its REQUIRED list (keep the two in step):
# AVX512F/CD/BW/DQ/VL (-DGGML_AVX512) and AVX512-VNNI (the int8 dot products of the
# quantised matmuls). Not VBMI (no ggml kernel uses it in this version; requiring it
# would drop Skylake-SP and Cascade Lake Xeons), not BF16 (only BF16 weights use it), not
# AMX (crashed here).
#
# Usage: portable-cmake-args.sh [ARCH [VARIANT]]   ARCH: x86_64 / amd64 / aarch64 / arm64,
#                                                  default `uname -m`; VARIANT: avx2 (default)
#                                                  or avx512
arch="${1:-$(uname -m)}"
variant="${2:-avx2}"
case "$arch/$variant" in
    aarch64/avx2|arm64/avx2)
        echo "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" ;;
    */avx2)
        echo "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \
             "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
    x86_64/avx512|amd64/avx512)
        echo "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON" \
             "-DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_BF16=OFF" \
             "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
    *)
        echo "portable-cmake-args.sh: no variant '$variant' for '$arch'" >&2
        exit 1 ;;
esac
