"""handlers.aws_lambda as Lambda runs it: `python -m awslambdaric handlers.aws_lambda.handler`
against a Lambda Runtime API (tests/lambda_runtime.py), driven with the events `sam
local generate-event` produced (events/).

One on-demand function process serves every event of the module (a warm sandbox after
one cold start): REST v1, HTTP API v2, Function URL and ALB answers, a buffered stream,
a 400, then an invocation after the sandbox was frozen (SIGSTOP) and thawed (SIGCONT)
as Lambda does between invocations. We check that the model loads in the init phase
(before the first poll for work), Powertools' JSON logs carry the request id Lambda
sent, and the EMF metrics. Functions that fail are separate, cheap processes (no model
loads): a model that cannot load answers 503 with the cause; settings the mode refuses
fail init through /runtime/init/error.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lambda_runtime import Answer, Function, RuntimeApi, lambda_env

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
KINDS = ("rest-v1", "http-v2", "function-url", "alb")
STREAM_BODY = json.dumps({"messages": [{"role": "user", "content": "Count to five."}],
                          "max_tokens": 6, "temperature": 0, "stream": True,
                          "stream_options": {"include_usage": True}})


def event(name: str, body: str | None = None) -> dict[str, Any]:
    data = json.loads((EVENTS / name).read_text())
    if body is not None:
        data["body"] = base64.b64encode(body.encode()).decode()
        data["isBase64Encoded"] = True
    return data


def at_path(data: dict[str, Any], path: str) -> dict[str, Any]:
    """An HTTP API v2 event for another path."""
    data["rawPath"] = data["requestContext"]["http"]["path"] = path
    return data


@pytest.fixture
def api() -> Iterator[RuntimeApi]:
    runtime = RuntimeApi()
    yield runtime
    runtime.close()


def start(api: RuntimeApi, env: dict[str, str], **kwargs: Any) -> Function:
    function = Function(api, lambda_env(api, extra=env), **kwargs)
    function.start()
    return function


@pytest.fixture(scope="module")
def sandbox(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("lambda")
    api = RuntimeApi()
    function = Function(api, lambda_env(api, extra={
        "STRATO_MODEL": str(gemma_path), "STRATO_CTX": "512", "STRATO_PARALLEL": "2",
        "STRATO_THREADS": "2", "STRATO_TIERS": f"ram:1GiB,disk:{work / 'tiers'}:2GiB"}))
    try:
        init = function.start()
        answers: dict[str, Answer] = {}
        for kind in KINDS:
            for what in ("models", "chat"):
                answers[f"{kind}-{what}"] = function.invoke(event(f"{kind}-{what}.json"))
        answers["stream"] = function.invoke(event("function-url-chat.json", STREAM_BODY))
        answers["bad"] = function.invoke(event("http-v2-chat.json", '{"messages": ['))
        function.freeze()
        function.thaw()
        answers["thawed"] = function.invoke(event("http-v2-chat.json"))
        yield {"init": init, "answers": answers, "stdout": function.json_lines(),
               "function": function}
    finally:
        function.kill()
        api.close()


def body_of(response: dict[str, Any]) -> str:
    body = response["body"]
    return base64.b64decode(body).decode() if response.get("isBase64Encoded") else body


def answer(sandbox: dict[str, Any], name: str) -> dict[str, Any]:
    got = sandbox["answers"][name]
    assert got.ok, got.body
    return got.body


def test_model_loads_in_the_init_phase(sandbox: dict[str, Any]) -> None:
    assert sandbox["init"].kind == "next"
    lines = sandbox["stdout"]
    loaded = [i for i, line in enumerate(lines) if line.get("message") == "model loaded"]
    assert len(loaded) == 1
    first_invocation = next(i for i, line in enumerate(lines) if "function_request_id" in line)
    assert loaded[0] < first_invocation
    init = next(line for line in lines if line.get("message") == "strato init")
    assert init["mode"] == "on-demand"


@pytest.mark.parametrize("kind", KINDS)
def test_models_event(sandbox: dict[str, Any], kind: str) -> None:
    response = answer(sandbox, f"{kind}-models")
    assert response["statusCode"] == 200, response
    models = json.loads(body_of(response))
    assert models["object"] == "list" and models["data"][0]["architecture"] == "gemma3"


@pytest.mark.parametrize("kind", KINDS)
def test_chat_event(sandbox: dict[str, Any], kind: str) -> None:
    response = answer(sandbox, f"{kind}-chat")
    assert response["statusCode"] == 200, response
    reply = json.loads(body_of(response))
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"]
    assert 0 < reply["usage"]["completion_tokens"] <= 8  # the event asks for 8


def test_greedy_answers_agree_across_event_kinds(sandbox: dict[str, Any]) -> None:
    texts = {kind: json.loads(body_of(answer(sandbox, f"{kind}-chat")))
             ["choices"][0]["message"]["content"] for kind in KINDS}
    assert len(set(texts.values())) == 1, texts


def test_streamed_request_is_buffered_sse(sandbox: dict[str, Any]) -> None:
    response = answer(sandbox, "stream")
    assert response["statusCode"] == 200
    events = [line for line in body_of(response).splitlines() if line]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2][len("data: "):])["usage"]
    assert usage["completion_tokens"] == 6


def test_bad_request_is_a_400_with_the_envelope(sandbox: dict[str, Any]) -> None:
    response = answer(sandbox, "bad")
    assert response["statusCode"] == 400
    assert json.loads(body_of(response))["error"]["type"] == "invalid_request_error"


def test_answers_after_a_freeze(sandbox: dict[str, Any]) -> None:
    before = json.loads(body_of(answer(sandbox, "http-v2-chat")))
    after = json.loads(body_of(answer(sandbox, "thawed")))
    assert after["choices"][0]["message"]["content"] == \
        before["choices"][0]["message"]["content"]


def test_logs_are_json_with_the_request_id(sandbox: dict[str, Any]) -> None:
    ids = {a.request_id for a in sandbox["answers"].values()}
    logged = {line["function_request_id"] for line in sandbox["stdout"]
              if "function_request_id" in line}
    assert logged and logged <= ids


def test_emf_metrics(sandbox: dict[str, Any]) -> None:
    emf = [line for line in sandbox["stdout"] if "_aws" in line]
    names = {m["Name"] for line in emf for d in line["_aws"]["CloudWatchMetrics"]
             for m in d["Metrics"]}
    assert {"ColdStart", "TTFT", "PromptTokens", "CompletionTokens"} <= names
    assert all(d["Namespace"] == "strato" for line in emf
               for d in line["_aws"]["CloudWatchMetrics"])
    cold = [line for line in emf if "ColdStart" in line]
    assert len(cold) == 1 and cold[0]["ColdStart"] in ([1.0], 1.0)
    ttft = [v for line in emf if "TTFT" in line
            for v in (line["TTFT"] if isinstance(line["TTFT"], list) else [line["TTFT"]])]
    assert ttft and all(v > 0 for v in ttft)


def test_a_model_that_fails_to_load_answers_503(api: RuntimeApi, tmp_path: Path) -> None:
    """On-demand: init completes (a retried init would fail the same way) and every
    request gets a 503 naming the cause."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 60)
    function = start(api, {"STRATO_MODEL": str(broken), "STRATO_TIERS": "ram:64MiB"})
    try:
        got = function.invoke(event("http-v2-chat.json"))
        assert got.ok and got.body["statusCode"] == 503, got.body
        error = json.loads(body_of(got.body))["error"]
        assert "unsupported GGUF version" in error["message"]
        ready = function.invoke(at_path(event("http-v2-models.json"), "/ready"))
        assert ready.body["statusCode"] == 503
    finally:
        function.kill()


@pytest.mark.parametrize("init_type,env,refused", [
    ("snap-start", {"STRATO_TIERS": "ram:1GiB,disk:/mnt/models/strato:10GiB"}, "EFS"),
    ("snap-start", {"STRATO_TIERS": "ram:1GiB,disk:/tmp/strato:2GiB"}, "512 MB of /tmp"),
    ("on-demand", {"AWS_LAMBDA_MAX_CONCURRENCY": "2", "STRATO_TIERS": "ram:1GiB"},
     "Managed Instances"),
])
def test_settings_the_mode_forbids_fail_init(api: RuntimeApi, init_type: str,
                                              env: dict[str, str], refused: str) -> None:
    function = Function(api, lambda_env(api, init_type, extra=env),
                        workers=int(env.get("AWS_LAMBDA_MAX_CONCURRENCY", 1)))
    try:
        end = function.start()
        assert end.kind == "init_error", end
        assert refused in end.body["errorMessage"]
        assert end.body["errorType"] == "BadRequest"
    finally:
        function.kill()
