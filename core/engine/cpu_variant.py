"""Which build of llama.cpp this process loads: the portable one or the AVX-512 one.

strato ships llama.cpp twice (README, "CPU kernels"): the wheel's own libraries, built for
AVX2/FMA/F16C so that they run on any x86_64 host (and on arm64), and a second set built
with AVX-512 (F/CD/BW/DQ/VL + VNNI), about 1.5x faster on prompts, that dies with SIGILL
on a CPU without those instructions. llama-cpp-python loads its libraries once, from
`LLAMA_CPP_LIB_PATH` when that is set, at its first import; so this module must run
before `import llama_cpp` (core/engine/llama.py imports it first) and decides once per
process.

The CPU's features come from CPUID as glibc saw it at start-up
(`__x86_get_cpuid_feature_leaf`, glibc >= 2.33): what the executing CPU can run, with
the OS's AVX-512 register state (XCR0) already checked. /proc/cpuinfo is only the
fallback: it describes the host kernel's CPU, which is not the executing one under an
emulator (qemu-user reports the host's AVX-512 flags while emulating a Haswell).

`STRATO_CPU_VARIANT` = auto (default) | portable | avx512 overrides the choice; avx512 on a
CPU without the features is refused with an error rather than a SIGILL later. A
`LLAMA_CPP_LIB_PATH` set by someone else (a CUDA build, say) is left alone.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VARIANT = "STRATO_CPU_VARIANT"
# Where the AVX-512 libraries are: this env var, else `lib-avx512` beside the wheel's
# `lib` inside the llama_cpp package (where `make install`, the Lambda layer and the
# container image put them).
ENV_LIB_DIR = "STRATO_LLAMA_AVX512_LIB"
PACKAGE_LIB_DIR = "lib-avx512"
# The path this module set LLAMA_CPP_LIB_PATH to, so that a child process (which inherits
# both) decides afresh instead of mistaking the parent's choice for an operator's.
_ENV_MARK = "STRATO_CPU_VARIANT_LIB_PATH"
_LLAMA_ENV = "LLAMA_CPP_LIB_PATH"

PORTABLE = "portable"
AVX512 = "avx512"
EXTERNAL = "external"
TOO_LATE = "too-late"
REQUESTS = ("auto", PORTABLE, AVX512)

# What the AVX-512 build executes, in /proc/cpuinfo's spelling; keep in step with
# layers/llama-cpp/portable-cmake-args.sh (x86_64 avx512). AVX2/FMA/F16C/BMI2 are the
# portable build's own floor, which the AVX-512 build keeps.
AVX512_REQUIRED = frozenset({
    "avx2", "fma", "f16c", "bmi2",
    "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni",
})

# (glibc leaf index, register: eax ebx ecx edx = 0..3, bit) of <sys/platform/x86.h>:
# leaf index 0 is CPUID 1, index 1 is CPUID 7 subleaf 0.
_GLIBC_BITS = {
    "fma": (0, 2, 12), "f16c": (0, 2, 29),
    "avx2": (1, 1, 5), "bmi2": (1, 1, 8),
    "avx512f": (1, 1, 16), "avx512dq": (1, 1, 17), "avx512cd": (1, 1, 28),
    "avx512bw": (1, 1, 30), "avx512vl": (1, 1, 31), "avx512_vnni": (1, 2, 11),
}


class CpuVariantError(RuntimeError):
    """STRATO_CPU_VARIANT asks for something this host cannot run or does not have."""


@dataclass(frozen=True)
class Choice:
    """The decision: `lib_dir` None means the wheel's own llama_cpp/lib."""

    variant: str          # portable | avx512 | external | too-late
    lib_dir: Path | None
    reason: str


def choose(flags: frozenset[str], requested: str, avx512_dir: Path | None) -> Choice:
    """Pure decision from the CPU's features, the request and what is installed."""
    if requested not in REQUESTS:
        raise CpuVariantError(f"{ENV_VARIANT}={requested!r}: expected one of {', '.join(REQUESTS)}")
    missing = sorted(AVX512_REQUIRED - flags)
    if requested == PORTABLE:
        return Choice(PORTABLE, None, f"{ENV_VARIANT}=portable")
    if requested == AVX512:
        if missing:
            raise CpuVariantError(f"{ENV_VARIANT}=avx512 but this CPU lacks {', '.join(missing)}")
        if avx512_dir is None:
            raise CpuVariantError(f"{ENV_VARIANT}=avx512 but no AVX-512 build of llama.cpp is "
                                  f"installed (set {ENV_LIB_DIR} or run `make install`)")
        return Choice(AVX512, avx512_dir, f"{ENV_VARIANT}=avx512")
    if missing:
        return Choice(PORTABLE, None, f"CPU lacks {', '.join(missing)}")
    if avx512_dir is None:
        return Choice(PORTABLE, None, "CPU has AVX-512 but no AVX-512 build is installed")
    return Choice(AVX512, avx512_dir, "CPU has " + " ".join(sorted(AVX512_REQUIRED)))


def glibc_cpu_flags() -> frozenset[str] | None:
    """The features glibc found usable via CPUID at start-up; None where glibc cannot say."""
    try:
        leaf_of = ctypes.CDLL(None).__x86_get_cpuid_feature_leaf
    except (AttributeError, OSError):
        return None

    class _Leaf(ctypes.Structure):
        _fields_ = [("cpuid", ctypes.c_uint32 * 4), ("active", ctypes.c_uint32 * 4)]

    leaf_of.restype = ctypes.POINTER(_Leaf)
    leaf_of.argtypes = [ctypes.c_uint]
    leaves = {i: leaf_of(i).contents.active for i in {i for i, _, _ in _GLIBC_BITS.values()}}
    return frozenset(name for name, (i, reg, bit) in _GLIBC_BITS.items()
                     if leaves[i][reg] >> bit & 1)


def cpuinfo_flags(text: str) -> frozenset[str]:
    """The `flags` of the first processor in /proc/cpuinfo's text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_flags() -> tuple[frozenset[str], str]:
    """The executing CPU's features and where they came from."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset(), f"none: {platform.machine()} is not x86_64"
    flags = glibc_cpu_flags()
    if flags is not None:
        return flags, "cpuid"
    try:
        return cpuinfo_flags(Path("/proc/cpuinfo").read_text()), "/proc/cpuinfo"
    except OSError:
        return frozenset(), "nothing readable"


def installed_avx512_dir() -> Path | None:
    """The directory holding the AVX-512 libllama.so, if there is one."""
    explicit = os.environ.get(ENV_LIB_DIR)
    if explicit:
        candidates = [Path(explicit)]
    else:
        spec = importlib.util.find_spec("llama_cpp")  # finds the package without importing it
        locations = spec.submodule_search_locations if spec else None
        candidates = [Path(p) / PACKAGE_LIB_DIR for p in (locations or [])]
    return next((c.resolve() for c in candidates if (c / "libllama.so").exists()), None)


def apply() -> Choice:
    """Decide and point LLAMA_CPP_LIB_PATH at the choice; call before importing llama_cpp."""
    current = os.environ.get(_LLAMA_ENV)
    if "llama_cpp.llama_cpp" in sys.modules:  # imported elsewhere first: its libraries stay
        return Choice(TOO_LATE, Path(current) if current else None,
                      "llama_cpp was imported before core.engine.cpu_variant")
    if current and current != os.environ.get(_ENV_MARK):
        return Choice(EXTERNAL, Path(current), f"{_LLAMA_ENV} set by the environment")
    flags, source = cpu_flags()
    choice = choose(flags, os.environ.get(ENV_VARIANT, "auto").strip().lower() or "auto",
                    installed_avx512_dir())
    choice = Choice(choice.variant, choice.lib_dir, f"{choice.reason} (features from {source})")
    if choice.lib_dir is None:
        os.environ.pop(_LLAMA_ENV, None)
        os.environ.pop(_ENV_MARK, None)
    else:
        os.environ[_LLAMA_ENV] = os.environ[_ENV_MARK] = str(choice.lib_dir)
    return choice


def single_threaded_blas() -> None:
    """One OpenBLAS thread for numpy, unless the operator chose otherwise.

    llama_cpp imports numpy, whose OpenBLAS starts a thread per core that spins after
    start-up; strato does no BLAS work in Python (llama.cpp has its own threads), and on a
    2-vCPU function those spinning threads took about 0.1-0.15 CPU s from the model build
    of a cold start (measured with perf on the Gemma 270M load). Must run before numpy
    is imported, like `apply`."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


single_threaded_blas()
CHOICE = apply()
log.log(logging.WARNING if CHOICE.variant == TOO_LATE else logging.INFO,
        "llama.cpp CPU variant: %s (%s)", CHOICE.variant, CHOICE.reason)
