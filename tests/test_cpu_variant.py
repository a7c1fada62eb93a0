"""The two llama.cpp builds (portable AVX2, AVX-512) and the start-up choice between them.

The decision is pure and tested on the flag sets of real CPU generations. The builds are
tested in fresh processes (tests/cpu_variant_probe.py): each loads the real Gemma and
decodes through strato's engine, natively and on an emulated AVX2-only CPU
(`qemu-x86_64 -cpu Haswell`, Debian's qemu-user; `make test` installs it), where the
AVX-512 build must be left alone, and where loading it anyway must die of SIGILL, which
shows the emulated CPU is a real test of the choice.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.engine import cpu_variant as cv

ROOT = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")

HASWELL = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})
SKYLAKE_SP = HASWELL | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
CASCADE_LAKE = SKYLAKE_SP | {"avx512_vnni"}
SAPPHIRE_RAPIDS = CASCADE_LAKE | {"avx512vbmi", "avx512_bf16", "amx_tile", "amx_int8"}
LIBS = Path("/opt/llama-avx512")  # any path: choose() never touches it


# ---- the decision ----------------------------------------------------------------------

@pytest.mark.parametrize("flags,expected", [
    (CASCADE_LAKE, cv.AVX512),
    (SAPPHIRE_RAPIDS, cv.AVX512),
    (SKYLAKE_SP, cv.PORTABLE),      # no VNNI
    (HASWELL, cv.PORTABLE),         # and every AMD EPYC before Zen 4
    (frozenset(), cv.PORTABLE),     # arm64, or nothing readable
])
def test_auto_picks_avx512_only_with_every_feature_it_uses(flags, expected) -> None:
    choice = cv.choose(frozenset(flags), "auto", LIBS)
    assert choice.variant == expected
    assert choice.lib_dir == (LIBS if expected == cv.AVX512 else None)


def test_auto_names_what_is_missing() -> None:
    assert "avx512_vnni" in cv.choose(SKYLAKE_SP, "auto", LIBS).reason
    choice = cv.choose(CASCADE_LAKE, "auto", None)
    assert choice.variant == cv.PORTABLE and "no AVX-512 build" in choice.reason


def test_overrides() -> None:
    assert cv.choose(CASCADE_LAKE, "portable", LIBS).variant == cv.PORTABLE
    assert cv.choose(CASCADE_LAKE, "avx512", LIBS).lib_dir == LIBS
    with pytest.raises(cv.CpuVariantError, match="lacks avx512_vnni"):
        cv.choose(SKYLAKE_SP, "avx512", LIBS)
    with pytest.raises(cv.CpuVariantError, match="no AVX-512 build"):
        cv.choose(CASCADE_LAKE, "avx512", None)
    with pytest.raises(cv.CpuVariantError, match="expected one of auto, portable, avx512"):
        cv.choose(CASCADE_LAKE, "avx2", LIBS)


def test_cpuinfo_flags_reads_the_first_processor() -> None:
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f\n\n"
            "processor\t: 1\nflags\t\t: fpu\n")
    assert cv.cpuinfo_flags(text) == {"fpu", "avx2", "avx512f"}
    assert cv.cpuinfo_flags("") == frozenset()


@pytest.mark.skipif(not X86, reason="CPUID is x86")
def test_cpuid_and_cpuinfo_agree_on_this_host() -> None:
    """Natively the two sources must agree on every feature the choice reads."""
    glibc = cv.glibc_cpu_flags()
    assert glibc is not None, "glibc >= 2.33 exports __x86_get_cpuid_feature_leaf"
    cpuinfo = cv.cpuinfo_flags(Path("/proc/cpuinfo").read_text())
    assert glibc == cpuinfo & cv.AVX512_REQUIRED
    assert {"avx2", "fma", "f16c"} <= glibc


@pytest.fixture
def fresh(monkeypatch) -> None:
    """apply() as in a process that has not loaded llama_cpp yet."""
    monkeypatch.delitem(sys.modules, "llama_cpp.llama_cpp", raising=False)


def test_apply_leaves_an_operators_lib_path_alone(monkeypatch, fresh) -> None:
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", "/opt/cuda-build/lib")
    monkeypatch.delenv("STRATO_CPU_VARIANT_LIB_PATH", raising=False)
    monkeypatch.setenv(cv.ENV_VARIANT, "portable")
    assert cv.apply().variant == cv.EXTERNAL
    assert os.environ["LLAMA_CPP_LIB_PATH"] == "/opt/cuda-build/lib"


def test_apply_too_late_says_so(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp.llama_cpp", object())
    assert cv.apply().variant == cv.TOO_LATE


def test_apply_decides_afresh_in_a_child_of_strato(monkeypatch, fresh) -> None:
    """A child inherits the parent's LLAMA_CPP_LIB_PATH and the mark that strato set it."""
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", "/parent/choice")
    monkeypatch.setenv("STRATO_CPU_VARIANT_LIB_PATH", "/parent/choice")
    monkeypatch.setenv(cv.ENV_VARIANT, "portable")
    assert cv.apply().variant == cv.PORTABLE
    assert "LLAMA_CPP_LIB_PATH" not in os.environ
    monkeypatch.setenv(cv.ENV_VARIANT, "bogus")
    with pytest.raises(cv.CpuVariantError):
        cv.apply()


# ---- the builds, in fresh processes ----------------------------------------------------

def probe(model: Path, *, variant: str | None = None, prefix: tuple[str, ...] = (),
          **env: str) -> subprocess.CompletedProcess:
    """tests/cpu_variant_probe.py in a fresh process (under `prefix`, e.g. qemu)."""
    child = {k: v for k, v in os.environ.items()  # as a fresh shell: this process chose already
             if k not in (cv.ENV_VARIANT, "LLAMA_CPP_LIB_PATH", "STRATO_CPU_VARIANT_LIB_PATH")}
    child |= {"PYTHONPATH": str(ROOT), **env}
    if variant is not None:
        child[cv.ENV_VARIANT] = variant
    return subprocess.run([*prefix, sys.executable, "-m", "tests.cpu_variant_probe",
                           str(model), "2"], cwd=ROOT, env=child, capture_output=True,
                          text=True, timeout=1800, preexec_fn=no_core_dump, check=False)


def no_core_dump() -> None:
    """qemu writes a guest's core (hundreds of MB) into the working directory otherwise."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def result(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def wheel_lib_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]).resolve() / "lib"


def has_avx512() -> bool:
    return cv.AVX512_REQUIRED <= (cv.glibc_cpu_flags() or frozenset())


@pytest.fixture(scope="module")
def avx512_dir() -> Path:
    if not X86:
        pytest.skip("the AVX-512 build is x86_64 only")
    found = cv.installed_avx512_dir()
    assert found is not None, "no AVX-512 llama.cpp build installed: run `make install`"
    return found


@pytest.fixture(scope="module")
def native(gemma_path, avx512_dir) -> dict[str, dict]:
    """One probe per STRATO_CPU_VARIANT this host can run."""
    runs = {"auto": None, "portable": "portable"} | ({"avx512": "avx512"} if has_avx512() else {})
    return {name: result(probe(gemma_path, variant=v)) for name, v in runs.items()}


def assert_loaded_from(run: dict, lib_dir: Path) -> None:
    assert run["libllama"] and run["libggml_cpu"]
    for path in run["libllama"] + run["libggml_cpu"]:
        assert Path(path).resolve().parent == lib_dir, run


def test_portable_build_loads_and_decodes(native) -> None:
    run = native["portable"]
    assert run["variant"] == cv.PORTABLE
    assert_loaded_from(run, wheel_lib_dir())
    assert "AVX2 = 1" in run["system_info"] and "AVX512 = 1" not in run["system_info"]
    assert run["completion_tokens"] == 2 and run["text"].strip()


def test_avx512_build_loads_and_decodes_the_same_tokens(native, avx512_dir) -> None:
    if "avx512" not in native:
        pytest.skip("this CPU lacks " + ", ".join(sorted(cv.AVX512_REQUIRED - (cv.glibc_cpu_flags() or set()))))
    run = native["avx512"]
    assert run["variant"] == cv.AVX512
    assert_loaded_from(run, avx512_dir)
    assert "AVX512 = 1" in run["system_info"] and "AVX512_VNNI = 1" in run["system_info"]
    assert (run["completion_tokens"], run["text"]) == (2, native["portable"]["text"])


def test_auto_takes_the_fastest_build_this_cpu_runs(native) -> None:
    expected = cv.AVX512 if has_avx512() else cv.PORTABLE
    assert native["auto"]["variant"] == expected, native["auto"]["reason"]
    assert "features from cpuid" in native["auto"]["reason"]


# ---- an AVX2-only CPU: qemu-x86_64 -cpu Haswell ------------------------------------------

@pytest.fixture(scope="module")
def haswell(avx512_dir) -> tuple[str, ...]:
    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-x86_64 missing: `make system-packages` installs Debian's qemu-user"
    return (qemu, "-cpu", "Haswell")


@pytest.fixture(scope="module")
def small_gemma(gemma_path, tmp_path_factory) -> Path:
    """Gemma with 2 of its 18 blocks: emulated, the full model needs twice the CPU time."""
    from tests.smaller_gguf import with_fewer_blocks

    return with_fewer_blocks(gemma_path, tmp_path_factory.mktemp("qemu") / "gemma-2.gguf", 2)


def test_avx2_only_cpu_runs_the_portable_build(small_gemma, haswell) -> None:
    run = result(probe(small_gemma, prefix=haswell))
    assert run["variant"] == cv.PORTABLE
    assert "lacks avx512" in run["reason"] and "features from cpuid" in run["reason"]
    assert_loaded_from(run, wheel_lib_dir())
    assert run["completion_tokens"] == 2 and run["text"].strip()


def test_avx2_only_cpu_refuses_a_forced_avx512(small_gemma, haswell) -> None:
    done = probe(small_gemma, variant="avx512", prefix=haswell)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "CpuVariantError: STRATO_CPU_VARIANT=avx512 but this CPU lacks avx512" in done.stderr


def test_avx512_build_on_avx2_only_cpu_dies_of_sigill(small_gemma, haswell, avx512_dir) -> None:
    """The control: bypassing the choice must crash, or the emulated CPU proves nothing."""
    done = probe(small_gemma, prefix=haswell, LLAMA_CPP_LIB_PATH=str(avx512_dir))
    assert done.returncode == -signal.SIGILL, f"rc={done.returncode}\n{done.stderr[-2000:]}"
