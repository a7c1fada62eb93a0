"""template.yaml, the layer builds and the Lambda handler, checked against each other.

What `sam deploy` would hand AWS is rendered from template.yaml (tests/cfn_template.py),
then proven here: the function and layer Makefiles build with a local Python into the
layout Lambda mounts (/var/task, /opt/python), and the handler the template names,
imported from those build outputs alone (`python -S`: no site-packages, no editable
install), answers the `sam local generate-event` events in events/ for GET /v1/models
and a chat completion with the real Gemma model.

`sam build` and `sam package` themselves run in tests/test_sam_build.py. Not run here:
`sam build --use-container` and the Docker builds (no container engine on these
machines); the deploy itself (no AWS account). See docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cfn_template import Renderer, load

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = load(ROOT / "template.yaml")
LAMBDA_UNZIPPED_LIMIT = 262_144_000  # 250 MB: function + all its layers, unzipped
EVENT_FORMATS = ("rest-v1", "http-v2", "function-url", "alb")
LOCAL_WHEELS = ROOT / ".cache" / "wheels"  # the llama-cpp-python wheel `make install` built
LOCAL_AVX512 = ROOT / ".cache" / "llama-avx512" / "lib"  # and its AVX-512 libraries (x86_64)


def make(makefile: str, target: str, artifacts: Path, **variables: str) -> None:
    args = ["make", "-s", "-f", makefile, target, f"ARTIFACTS_DIR={artifacts}"]
    args += [f"{k}={v}" for k, v in variables.items()]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def makefile_of(logical_id: str) -> str:
    """The Makefile SAM's makefile builder would use for a resource."""
    resource = TEMPLATE["Resources"][logical_id]
    meta = resource.get("Metadata", {})
    assert meta.get("BuildMethod") == "makefile", f"{logical_id} is not a makefile build"
    props = resource["Properties"]
    folder = meta.get("ContextPath") or props.get("CodeUri") or props.get("ContentUri")
    return str(Path(folder) / "Makefile")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The API function's zip contents and both layers, built as `sam build` would."""
    wheels = sorted(LOCAL_WHEELS.glob("llama_cpp_python-*.whl"))
    assert wheels, f"no llama-cpp-python wheel in {LOCAL_WHEELS}: run `make install` first"
    out = {name: tmp_path_factory.mktemp(name) for name in ("function", "deps", "llama")}
    py = sys.executable
    make(makefile_of("ApiFunction"), "build-ApiFunction", out["function"])
    make(makefile_of("DepsLayer"), "build-DepsLayer", out["deps"], PYTHON=py,
         PY_VERSION=f"{sys.version_info.major}.{sys.version_info.minor}")
    make(makefile_of("LlamaCppLayer"), "build-LlamaCppLayer", out["llama"], PYTHON=py,
         LLAMA_CPP_WHEEL=str(wheels[-1]),
         AVX512_LIBS=str(LOCAL_AVX512))
    return out


# ---- the template's settings ---------------------------------------------------------

def test_api_function_settings_by_default() -> None:
    fn = Renderer(TEMPLATE).function("ApiFunction")
    assert fn["Handler"] == "handlers.aws_lambda.handler"
    assert fn["Runtime"] == "python3.12"
    assert fn["Layers"] == ["<LlamaCppLayer>", "<DepsLayer>"]
    env = fn["Environment"]["Variables"]
    assert env["STRATO_TIERS"] == "ram:2GiB,disk:/tmp/strato:8GiB"
    assert env["STRATO_REGISTRY"] == ""
    assert "VpcConfig" not in fn and "FileSystemConfigs" not in fn
    # /tmp holds the disk tier: its capacity must fit the ephemeral storage asked for.
    assert int(fn["EphemeralStorage"]["Size"]) * 2**20 >= 8 * 2**30
    assert fn["Events"]["Api"]["Properties"]["Path"] == "/{proxy+}"


def test_efs_is_mounted_where_the_tiers_string_points() -> None:
    fn = Renderer(TEMPLATE, SubnetIds="subnet-a,subnet-b",
                  SecurityGroupIds="sg-1").function("StreamFunction")
    tiers = fn["Environment"]["Variables"]["STRATO_TIERS"].split(",")
    assert tiers[-1] == "disk:/mnt/models/strato:200GiB"
    mount = fn["FileSystemConfigs"][0]["LocalMountPath"]
    assert tiers[-1].split(":")[1].startswith(mount + "/")
    assert fn["VpcConfig"] == {"SubnetIds": ["subnet-a", "subnet-b"], "SecurityGroupIds": ["sg-1"]}
    r = Renderer(TEMPLATE, SubnetIds="subnet-a,subnet-b", SecurityGroupIds="sg-1")
    assert [r.condition(c) for c in ("HasEfs", "HasSubnet2", "HasSubnet3")] == [True, True, False]


def test_registry_bucket_is_the_only_s3_access() -> None:
    r = Renderer(TEMPLATE, RegistryBucketName="models", RegistryPrefix="team/strato")
    env = r.function("ApiFunction")["Environment"]["Variables"]
    assert env["STRATO_REGISTRY"] == "s3://models/team/strato"
    statements = r.render(TEMPLATE["Resources"]["RegistryReadPolicy"]["Properties"])
    actions = {s["Action"]: s["Resource"] for s in statements["PolicyDocument"]["Statement"]}
    assert actions == {"s3:GetObject": "arn:aws:s3:::models/team/strato/*",
                       "s3:ListBucket": "arn:aws:s3:::models"}
    role = Renderer(TEMPLATE).render(TEMPLATE["Resources"]["FunctionRole"]["Properties"])
    assert role["ManagedPolicyArns"] == [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]


def test_stream_function_runs_the_same_app_through_the_web_adapter() -> None:
    for package, logical_id in (("Zip", "StreamFunction"), ("Image", "StreamImageFunction")):
        fn = Renderer(TEMPLATE, FunctionPackage=package).function(logical_id)
        assert fn["FunctionUrlConfig"]["InvokeMode"] == "RESPONSE_STREAM"
        assert fn["Environment"]["Variables"]["AWS_LWA_INVOKE_MODE"] == "response_stream"
    fn = Renderer(TEMPLATE, Architecture="arm64").function("StreamFunction")
    assert fn["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert fn["Layers"][-1].endswith(":layer:LambdaAdapterLayerArm64:27")
    run_sh = (ROOT / "infra" / "lambda" / "run.sh").read_text()
    assert "uvicorn handlers.lambda_stream:app" in run_sh and fn["Handler"] == "run.sh"


def test_image_function_uses_the_same_handler() -> None:
    fn = Renderer(TEMPLATE, FunctionPackage="Image").function("ApiImageFunction")
    assert fn["Condition"] == "IsImage" and fn["PackageType"] == "Image"
    assert fn["ImageConfig"]["Command"] == ["handlers.aws_lambda.handler"]
    dockerfile = (ROOT / fn["Metadata"]["Dockerfile"]).read_text()
    assert f"AS {fn['Metadata']['DockerBuildTarget']}\n" in dockerfile


def test_every_makefile_build_has_its_target() -> None:
    """SAM runs `make build-<LogicalId>`; a renamed resource must not lose its target."""
    ids = [k for k, v in TEMPLATE["Resources"].items()
           if v.get("Metadata", {}).get("BuildMethod") == "makefile"]
    assert set(ids) == {"ApiFunction", "StreamFunction", "LlamaCppLayer", "DepsLayer"}
    for logical_id in ids:
        dry = subprocess.run(["make", "-n", "-f", makefile_of(logical_id), f"build-{logical_id}",
                              "ARTIFACTS_DIR=/nonexistent"], cwd=ROOT, capture_output=True,
                             text=True)
        assert dry.returncode == 0, dry.stderr


# ---- the builds ----------------------------------------------------------------------

def test_layers_have_the_lambda_layout(built: dict[str, Path]) -> None:
    llama = built["llama"] / "python"
    assert (llama / "llama_cpp" / "__init__.py").is_file()
    assert (llama / "llama_cpp" / "lib" / "libllama.so").is_file()
    if platform.machine() == "x86_64":  # the second build core/engine/cpu_variant.py picks
        assert (llama / "llama_cpp" / "lib-avx512" / "libllama.so").is_file()
    assert not (llama / "lib").exists() and not (llama / "bin").exists()
    assert (built["deps"] / "python" / "mangum" / "__init__.py").is_file()
    assert (built["function"] / "handlers" / "aws_lambda.py").is_file()
    assert os.access(built["function"] / "run.sh", os.X_OK)
    assert not list(built["function"].rglob("__pycache__"))
    total = sum(tree_size(p) for p in built.values())
    assert total < LAMBDA_UNZIPPED_LIMIT, f"function + layers = {total / 1e6:.0f} MB unzipped"


HARNESS = r"""
import importlib, json, sys
from pathlib import Path

class Context:  # what Lambda passes; Powertools reads these four fields
    function_name = "strato-ApiFunction"
    memory_limit_in_mb = 4096
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:strato-ApiFunction:live"
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"

handler_path, events_dir, out = sys.argv[1:4]
module_name, attr = handler_path.rsplit(".", 1)
module = importlib.import_module(module_name)
handler = getattr(module, attr)
results = {"module_file": module.__file__, "sys_path": sys.path, "responses": {}}
for name in sys.argv[4:]:
    event = json.loads((Path(events_dir) / name).read_text())
    results["responses"][name] = handler(event, Context())
Path(out).write_text(json.dumps(results))
"""


def test_template_handler_answers_generated_events(built: dict[str, Path], gemma_path: Path,
                                                   tmp_path: Path) -> None:
    fn = Renderer(TEMPLATE, ModelReference=str(gemma_path)).function("ApiFunction")
    env = {k: str(v) for k, v in fn["Environment"]["Variables"].items()}
    # Lambda's /tmp is this test's tmp dir; a small context keeps the test light.
    env["STRATO_TIERS"] = env["STRATO_TIERS"].replace("/tmp/strato", str(tmp_path / "strato"))
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["STRATO_CTX"] = "512"
    env.update(PATH=os.environ["PATH"], HOME=str(tmp_path), LANG="C.UTF-8",
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", AWS_DEFAULT_REGION="us-east-1",
               AWS_LAMBDA_FUNCTION_NAME="strato-ApiFunction",
               # /var/task first, then /opt/python (all layers merged there), as on Lambda
               PYTHONPATH=os.pathsep.join(str(p) for p in (
                   built["function"], built["deps"] / "python", built["llama"] / "python")))
    events = [f"{fmt}-{route}.json" for fmt in EVENT_FORMATS for route in ("models", "chat")]
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-S", "-c", HARNESS, fn["Handler"],
                           str(ROOT / "events"), str(out), *events],
                          env=env, capture_output=True, text=True, timeout=600,
                          cwd=built["function"])  # Lambda's working directory is /var/task
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["module_file"].startswith(str(built["function"]))
    assert not [p for p in results["sys_path"] if "site-packages" in p]

    for name, response in results["responses"].items():
        assert response["statusCode"] == 200, (name, response)
        body = decode(response)
        if name.endswith("-models.json"):
            assert body["object"] == "list" and body["data"], name
        else:
            choice = body["choices"][0]
            assert choice["message"]["role"] == "assistant"
            assert choice["message"]["content"].strip(), name
            assert 0 < body["usage"]["completion_tokens"] <= 8
    # temperature 0: every front door gets the same answer from the same model
    answers = {decode(r)["choices"][0]["message"]["content"]
               for n, r in results["responses"].items() if n.endswith("-chat.json")}
    assert len(answers) == 1


def decode(response: dict[str, Any]) -> Any:
    body = response["body"]
    if response.get("isBase64Encoded"):
        import base64

        body = base64.b64decode(body).decode()
    return json.loads(body)
