"""`sam build` and `sam package`, the first half of a user's `sam deploy`, run for real.

SAM CLI (from .venv-tools, which `make test` installs through `make lint`) builds the
zip package with samconfig.toml's settings: the image functions excluded, `make` run in
the repository (build_in_source) through each resource's Makefile. The one difference
from a user's build is `--no-use-container`: there is no container engine here, so the
layers are built with the local Python (the patched llama-cpp-python wheel `make install`
built, passed through LLAMA_CPP_WHEEL). `sam package` then uploads to S3 served by moto_server and
rewrites the template, which must still pass cfn-lint and must leave the unbuilt image
functions alone instead of demanding an image.
"""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.cfn_template import load

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".venv-tools" / "bin"
WHEELS = ROOT / ".cache" / "wheels"
LAMBDA_UNZIPPED_LIMIT = 262_144_000
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com/strato"


def run(*args: object, env: dict[str, str]) -> str:
    done = subprocess.run([str(a) for a in args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"{args[:2]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def zip_of(s3, uri: str) -> zipfile.ZipFile:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    return zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def test_sam_build_and_package_the_zip_functions(s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    assert (TOOLS / "sam").exists(), "SAM CLI missing: run `make tools`"
    wheels = sorted(WHEELS.glob("llama_cpp_python-*.whl"))
    assert wheels, "no llama-cpp-python wheel: `make install`"
    env = dict(os.environ, SAM_CLI_TELEMETRY="0", LLAMA_CPP_WHEEL=str(wheels[-1]),
               AVX512_LIBS=str(ROOT / ".cache" / "llama-avx512" / "lib"))
    build = tmp_path / "build"
    run(TOOLS / "sam", "build", "--no-use-container", "--build-dir", build,
        "--cache-dir", tmp_path / "cache", env=env)
    assert sorted(p.name for p in build.iterdir() if p.is_dir()) == [
        "ApiFunction", "DepsLayer", "LlamaCppLayer", "StreamFunction"]

    packaged = tmp_path / "packaged.yaml"
    run(TOOLS / "sam", "package", "--template-file", build / "template.yaml",
        "--s3-bucket", s3_bucket.removeprefix("s3://"), "--image-repository", ECR,
        "--output-template-file", packaged, env=env)
    run(TOOLS / "cfn-lint", packaged, env=env)

    resources = load(packaged)["Resources"]
    for image_fn in ("ApiImageFunction", "StreamImageFunction"):
        assert resources[image_fn]["Properties"]["ImageUri"] == {"Ref": "AWS::NoValue"}
    s3 = boto3.client("s3")
    code = resources["ApiFunction"]["Properties"]["CodeUri"]
    assert code == resources["StreamFunction"]["Properties"]["CodeUri"]  # one zip, two handlers
    function = zip_of(s3, code)
    names = set(function.namelist())
    assert {"handlers/aws_lambda.py", "handlers/http.py", "core/engine/llama.py", "run.sh"} <= names
    assert not [n for n in names if n.startswith((".venv", "node_modules", "tests/"))]
    assert (function.getinfo("run.sh").external_attr >> 16) & 0o111, "run.sh must be executable"

    unzipped = sum(i.file_size for i in function.infolist())
    for layer in ("LlamaCppLayer", "DepsLayer"):
        archive = zip_of(s3, resources[layer]["Properties"]["ContentUri"])
        unzipped += sum(i.file_size for i in archive.infolist())
        if layer == "LlamaCppLayer":
            assert "python/llama_cpp/__init__.py" in archive.namelist()
    assert unzipped < LAMBDA_UNZIPPED_LIMIT, f"{unzipped / 1e6:.0f} MB unzipped"


@pytest.mark.parametrize("env_name,excluded", [
    ("default", {"ApiImageFunction", "StreamImageFunction"}),
    ("image", {"ApiFunction", "StreamFunction", "LlamaCppLayer", "DepsLayer"}),
])
def test_samconfig_builds_exactly_one_package_type(env_name: str, excluded: set[str]) -> None:
    """Each config env excludes the other package type's resources, and only those."""
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert set(config[env_name]["build"]["parameters"]["exclude"]) == excluded
    resources = load(ROOT / "template.yaml")["Resources"]
    kind = "IsImage" if env_name == "default" else "IsZip"
    assert excluded == {k for k, v in resources.items() if v.get("Condition") == kind
                        and "Metadata" in v}


@pytest.mark.parametrize("runtime", ["this", "other"])
def test_function_zip_ships_bytecode_for_its_runtime_only(tmp_path: Path, runtime: str) -> None:
    """layers/compile-bytecode.sh: Lambda's code is read-only, so a zip without bytecode
    is compiled again at every cold start. Built with the runtime's interpreter, every
    module gets an unchecked-hash .pyc (PEP 552 flags 0b01: no mtime to compare); built
    with another one, the zip ships source only and says so."""
    import sys

    version = "%d.%d" % sys.version_info[:2] if runtime == "this" else "3.99"
    done = subprocess.run(["make", "-f", "layers/function/Makefile", "build-ApiFunction",
                           f"ARTIFACTS_DIR={tmp_path}", f"PY_VERSION={version}",
                           f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    sources = sorted(tmp_path.rglob("*.py"))
    compiled = sorted(tmp_path.rglob("*.pyc"))
    assert len(sources) > 50
    if runtime == "other":
        assert compiled == [] and "ships source only" in done.stderr
        return
    tag = sys.implementation.cache_tag
    assert {p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc" for p in sources} == set(compiled)
    assert {int.from_bytes(p.read_bytes()[4:8], "little") for p in compiled} == {0b01}
