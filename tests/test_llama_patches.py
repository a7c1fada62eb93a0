"""strato's llama.cpp patch set (layers/llama-cpp/patches, README "llama.cpp patches").

- The loader patch (0001) makes llama.cpp format a metadata array only as far as its log
  line prints it. What it prints must not change: the lines of the installed build(s) are
  compared with upstream's, recorded from the unpatched llama-cpp-python 0.3.36 loading
  the same model (the cut-off array values are where a wrong cut would show).
- The vocabulary patch (0002) compares a token with the special-token literals only when
  its first bytes allow a match: every literal in those loops must pass that filter, and
  the special, control and end-of-generation tokens llama.cpp reports for Gemma 3 and
  SmolLM2 must be upstream's (tests/llama_vocab_upstream.json).
- The vocabulary's per-token loops (0003) walk the tokens by id instead of through the
  token map: the same test holds them to upstream's tokens, as a set of lines (only
  the lines' order may differ).
- patched-sdist.sh: every patch applies with `patch -p1` in name order, the result keeps
  the sdist's name, the same patch set is not redone, a changed one is. Run on a stand-in
  sdist holding only the patched files, rebuilt from `make install`'s patched sdist by
  reversing the patches (no download).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from core.engine import cpu_variant as cv

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "layers" / "llama-cpp"
PATCHES = sorted((SCRIPTS / "patches").glob("*.patch"))
VERSION = "0.3.36"
NAME = f"llama_cpp_python-{VERSION}"
PATCHED_SDIST = ROOT / ".cache" / "llama-sdist" / f"{NAME}.tar.gz"  # from `make install`

# Gemma 3 270M's array keys as upstream llama.cpp (unpatched) dumps them.
UPSTREAM_ARRAY_LINES = [
    'llama_model_loader: - kv   6:                               general.tags arr[str,4]'
    '       = ["gemma3", "gemma", "google", "text-g...',
    'llama_model_loader: - kv  20:                      tokenizer.ggml.tokens arr[str,262144]'
    '  = ["<pad>", "<eos>", "<bos>", "<unk>", ...',
    'llama_model_loader: - kv  21:                      tokenizer.ggml.scores arr[f32,262144]'
    '  = [-1000.000000, -1000.000000, -1000.00...',
    'llama_model_loader: - kv  22:                  tokenizer.ggml.token_type arr[i32,262144]'
    '  = [3, 3, 3, 3, 3, 4, 3, 3, 3, 3, 3, 3, ...',
]


def log_lines(model: Path, variant: str) -> dict[str, list[str]]:
    """tests/llama_log_probe.py in a fresh process with STRATO_CPU_VARIANT=variant."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLAMA_CPP_LIB_PATH", "STRATO_CPU_VARIANT_LIB_PATH")}
    env |= {"PYTHONPATH": str(ROOT), cv.ENV_VARIANT: variant}
    done = subprocess.run([sys.executable, "-m", "tests.llama_log_probe", str(model)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stderr[-3000:]}"
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def skip_unless_runnable(variant: str) -> None:
    if variant == cv.AVX512:
        if cv.installed_avx512_dir() is None:
            pytest.skip("no AVX-512 build installed here (x86_64 `make install` makes one)")
        missing = cv.AVX512_REQUIRED - (cv.glibc_cpu_flags() or frozenset())
        if missing:
            pytest.skip("this CPU lacks " + ", ".join(sorted(missing)))


@pytest.mark.parametrize("variant", [cv.PORTABLE, cv.AVX512])
def test_metadata_dump_prints_what_upstream_printed(gemma_path, variant) -> None:
    skip_unless_runnable(variant)
    lines = log_lines(gemma_path, variant)["kv"]
    assert len(lines) == 33, lines
    assert [line for line in lines if " arr[" in line] == UPSTREAM_ARRAY_LINES
    assert "tokenizer.ggml.bos_token_id u32              = 2" in lines[23]


@pytest.mark.parametrize("variant", [cv.PORTABLE, cv.AVX512])
@pytest.mark.parametrize("model", ["gemma3-270m", "smollm2-135m"])
def test_special_tokens_are_the_ones_upstream_found(gemma_path, model, variant) -> None:
    from tests.smollm2 import ensure

    skip_unless_runnable(variant)
    path = gemma_path if model == "gemma3-270m" else ensure()
    upstream = json.loads((ROOT / "tests" / "llama_vocab_upstream.json").read_text())[model]
    # sorted: the "control token ... not marked as EOG" lines come in the order of the
    # loop that logs them, by id since 0003 (the token map's before); the set of lines
    # is what must not change
    assert sorted(log_lines(path, variant)["vocab"]) == upstream


def test_every_special_token_literal_passes_the_vocabulary_patch_filter() -> None:
    """0002 skips tokens that start with none of '<', '[', '_', "\u2581<": a literal that
    starts otherwise (a newer llama.cpp may add one) would never be found."""
    import re

    with tarfile.open(PATCHED_SDIST) as tar:
        member = tar.extractfile(f"{NAME}/vendor/llama.cpp/src/llama-vocab.cpp")
        source = member.read().decode() if member else ""
    region = source[source.index("auto-detect special tokens by text"):
                    source.index("// sanity checks")]
    literals = re.findall(r't\.first == "([^"]*)"', region)
    assert len(literals) > 50
    assert [lit for lit in literals if not lit.startswith(("<", "[", "_", "\u2581<"))] == []
    # and every condition that compares a token's text with one is behind the filter
    conditions = re.findall(r"if \((.*?)\) \{", region, flags=re.S)
    unguarded = [c for c in conditions
                 if 't.first == "' in c and not c.startswith("!maybe_special ? false :")]
    assert unguarded == []


# ---- patched-sdist.sh ------------------------------------------------------------------

def run_script(script: Path, out: Path, sdist: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SDIST=str(sdist))
    return subprocess.run(["sh", str(script), str(out), VERSION], env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def patched_files() -> list[str]:
    """The paths (inside the sdist's root) that the patches change."""
    files = []
    for patch in PATCHES:
        for line in patch.read_text().splitlines():
            if line.startswith("+++ b/"):
                files.append(line.removeprefix("+++ b/"))
    return files


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> dict[str, Path]:
    """A copy of patched-sdist.sh with the patches, and a stand-in upstream sdist: the
    files the patches touch, taken from the patched sdist and un-patched (in reverse)."""
    if not PATCHED_SDIST.exists():
        pytest.fail(f"{PATCHED_SDIST} missing: run `make install`")
    base = tmp_path_factory.mktemp("sdist")
    tree = base / "tree"
    with tarfile.open(PATCHED_SDIST) as tar:
        members = [tar.getmember(f"{NAME}/{f}") for f in patched_files()]
        tar.extractall(tree, members=members, filter="data")
    for patch in reversed(PATCHES):
        subprocess.run(["patch", "-R", "-p1", "--batch", "--quiet", "-i", str(patch)],
                       cwd=tree / NAME, check=True)
    upstream = base / "upstream" / f"{NAME}.tar.gz"
    upstream.parent.mkdir()
    with tarfile.open(upstream, "w:gz") as tar:
        tar.add(tree / NAME, arcname=NAME)
    scripts = base / "scripts"
    (scripts / "patches").mkdir(parents=True)
    shutil.copy(SCRIPTS / "patched-sdist.sh", scripts)
    for patch in PATCHES:
        shutil.copy(patch, scripts / "patches")
    return {"script": scripts / "patched-sdist.sh", "upstream": upstream, "tree": tree}


def members_of(sdist: Path) -> dict[str, bytes]:
    with tarfile.open(sdist) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_patched_sdist_applies_every_patch_and_keeps_the_name(stand_in, tmp_path) -> None:
    done = run_script(stand_in["script"], tmp_path, stand_in["upstream"])
    assert done.returncode == 0, done.stderr
    out = Path(done.stdout.strip())
    assert out == tmp_path / f"{NAME}.tar.gz"
    got = members_of(out)
    # The stand-in was un-patched from the patched sdist: patching it again gives that back.
    with tarfile.open(PATCHED_SDIST) as tar:
        for name in got:
            assert got[name] == tar.extractfile(name).read(), name
    assert set(got) == {f"{NAME}/{f}" for f in patched_files()}
    assert "applying" in done.stderr


def run_with_patch(stand_in, tmp_path: Path, name: str, diff: str):
    """patched-sdist.sh run with one more patch, `name`, in the stand-in's patch set."""
    extra = stand_in["script"].parent / "patches" / name
    extra.write_text(diff)
    try:
        return run_script(stand_in["script"], tmp_path, stand_in["upstream"])
    finally:
        extra.unlink()


def test_patched_sdist_is_reused_for_the_same_patches_and_redone_for_others(stand_in,
                                                                            tmp_path) -> None:
    first = run_script(stand_in["script"], tmp_path, stand_in["upstream"])
    assert first.returncode == 0, first.stderr
    out = Path(first.stdout.strip())
    made = out.stat().st_mtime_ns
    again = run_script(stand_in["script"], tmp_path, stand_in["upstream"])
    assert again.returncode == 0 and Path(again.stdout.strip()) == out
    assert out.stat().st_mtime_ns == made and "applying" not in again.stderr

    target = patched_files()[0]
    original = (stand_in["tree"] / NAME / target).read_text().splitlines()
    redone = run_with_patch(stand_in, tmp_path, "9999-test-note.patch",
                            f"--- a/{target}\n+++ b/{target}\n@@ -1,1 +1,2 @@\n"
                            f" {original[0]}\n+// strato test note\n")
    assert redone.returncode == 0, redone.stderr
    assert "9999-test-note.patch" in redone.stderr
    text = members_of(out)[f"{NAME}/{target}"].decode()
    assert text.splitlines()[1] == "// strato test note"


def test_a_patch_that_no_longer_applies_fails_the_run(stand_in, tmp_path) -> None:
    target = patched_files()[0]
    done = run_with_patch(stand_in, tmp_path, "9998-stale.patch",
                          f"--- a/{target}\n+++ b/{target}\n@@ -1,1 +1,1 @@\n"
                          "-a line that is not there\n+its replacement\n")
    assert done.returncode != 0
    assert not (tmp_path / f"{NAME}.tar.gz").exists()
