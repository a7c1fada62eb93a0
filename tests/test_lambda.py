"""handlers.aws_lambda answers the events `sam local generate-event` produced (events/).

One fresh process plays a Lambda sandbox (tests/lambda_driver.py): import = init phase
(the model loads there), then one `handler(event, context)` per event. We check the
answers for REST v1, HTTP API v2, Function URL and ALB events, that the model was loaded
before the first invocation, and the Powertools output: JSON log lines carrying the
request id, and EMF metrics in namespace "strato" (ColdStart, TTFT, tokens).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
KINDS = ("rest-v1", "http-v2", "function-url", "alb")
STREAM_BODY = json.dumps({"messages": [{"role": "user", "content": "Count to five."}],
                          "max_tokens": 6, "temperature": 0, "stream": True,
                          "stream_options": {"include_usage": True}})


@pytest.fixture(scope="module")
def sandbox(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("lambda")
    out = work / "results.json"
    args = []
    for kind in KINDS:
        args += [str(EVENTS / f"{kind}-models.json"), str(EVENTS / f"{kind}-chat.json")]
    args += [f"{EVENTS / 'function-url-chat.json'}::body={STREAM_BODY}",
             f"{EVENTS / 'http-v2-chat.json'}::body={{\"messages\": ["]
    env = {**os.environ, "STRATO_MODEL": str(gemma_path), "STRATO_CTX": "512",
           "STRATO_PARALLEL": "2", "STRATO_THREADS": "2",
           "AWS_LAMBDA_FUNCTION_NAME": "strato-test", "POWERTOOLS_SERVICE_NAME": "strato",
           "POWERTOOLS_METRICS_NAMESPACE": "", "POWERTOOLS_TRACE_DISABLED": "",
           "AWS_DEFAULT_REGION": "us-east-1",
           "STRATO_TIERS": f"ram:1GiB,disk:{work / 'tiers'}:2GiB"}
    env = {k: v for k, v in env.items() if v != ""}
    proc = subprocess.run([sys.executable, "-m", "tests.lambda_driver", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    data["stdout"] = [json.loads(line) for line in proc.stdout.splitlines()
                      if line.startswith("{")]
    return data


def body_of(response: dict[str, Any]) -> str:
    body = response["body"]
    return base64.b64decode(body).decode() if response.get("isBase64Encoded") else body


def result(sandbox: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in sandbox["results"] if r["event"].endswith(name))


def test_model_loads_in_the_init_phase(sandbox: dict[str, Any]) -> None:
    assert sandbox["init_error"] is None
    loaded = [line for line in sandbox["stdout"] if line.get("message") == "model loaded"]
    assert len(loaded) == 1
    first_invocation = next(i for i, line in enumerate(sandbox["stdout"])
                            if "function_request_id" in line)
    assert sandbox["stdout"].index(loaded[0]) < first_invocation


@pytest.mark.parametrize("kind", KINDS)
def test_models_event(sandbox: dict[str, Any], kind: str) -> None:
    response = result(sandbox, f"{kind}-models.json")["response"]
    assert response["statusCode"] == 200, response
    models = json.loads(body_of(response))
    assert models["object"] == "list" and models["data"][0]["architecture"] == "gemma3"


@pytest.mark.parametrize("kind", KINDS)
def test_chat_event(sandbox: dict[str, Any], kind: str) -> None:
    response = result(sandbox, f"{kind}-chat.json")["response"]
    assert response["statusCode"] == 200, response
    answer = json.loads(body_of(response))
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"]
    assert 0 < answer["usage"]["completion_tokens"] <= 8  # the event asks for 8


def test_greedy_answers_agree_across_event_kinds(sandbox: dict[str, Any]) -> None:
    texts = {kind: json.loads(body_of(result(sandbox, f"{kind}-chat.json")["response"]))
             ["choices"][0]["message"]["content"] for kind in KINDS}
    assert len(set(texts.values())) == 1, texts


def test_streamed_request_is_buffered_sse(sandbox: dict[str, Any]) -> None:
    response = result(sandbox, f"::body={STREAM_BODY}")["response"]
    assert response["statusCode"] == 200
    events = [line for line in body_of(response).splitlines() if line]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2][len("data: "):])["usage"]
    assert usage["completion_tokens"] == 6


def test_error_event_uses_the_envelope(sandbox: dict[str, Any]) -> None:
    response = next(r for r in sandbox["results"]
                    if r["event"].endswith('{"messages": ['))["response"]
    assert response["statusCode"] == 400
    assert json.loads(body_of(response))["error"]["type"] == "invalid_request_error"


def test_logs_are_json_with_the_request_id(sandbox: dict[str, Any]) -> None:
    ids = {r["request_id"] for r in sandbox["results"]}
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
