#!/usr/bin/env bash
# Regenerates the Lambda test events in this folder with `sam local generate-event`.
# Run from anywhere: `make events` or `bash events/generate.sh`. SAM comes from the tools
# venv (.venv-tools, see requirements/tools.txt) unless SAM is set.
#
# Two things sam cannot express are added by the small `patch` step at the end, in the
# open, so the JSON here is sam's output plus exactly these edits:
#   * a `content-type: application/json` header on the POST events (every OpenAI client
#     sends one; sam's templates carry no way to set headers);
#   * the Lambda Function URL events: sam has no `lambda function-url` generator. A
#     Function URL invokes with the API Gateway HTTP API payload format 2.0, so they are
#     the http-api-proxy events with the Function URL domain and no JWT authorizer
#     (https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html#urls-payloads).
#
# Usage: events/generate.sh [OUT_DIR]   (default: this folder; `make lint` regenerates
# into a temporary folder and diffs, so the committed JSON is what these commands make)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
mkdir -p "${1:-$HERE}"
cd "${1:-$HERE}"
SAM=${SAM:-$ROOT/.venv-tools/bin/sam}
PY=${PY:-$ROOT/.venv-tools/bin/python}
export SAM_CLI_TELEMETRY=0

# The chat body leaves out `model` so the function's default model (STRATO_MODEL) answers;
# temperature 0 keeps the answer reproducible.
CHAT='{"messages":[{"role":"user","content":"Say hello in one word."}],"max_tokens":8,"temperature":0}'

# API Gateway REST API (payload format 1.0)
"$SAM" local generate-event apigateway aws-proxy --method GET --path v1/models --body '' > rest-v1-models.json
"$SAM" local generate-event apigateway aws-proxy --method POST --path v1/chat/completions --body "$CHAT" > rest-v1-chat.json
# API Gateway HTTP API (payload format 2.0): what template.yaml's HttpApi sends
"$SAM" local generate-event apigateway http-api-proxy --method GET --path v1/models --body '' > http-v2-models.json
"$SAM" local generate-event apigateway http-api-proxy --method POST --path v1/chat/completions --body "$CHAT" > http-v2-chat.json
# Application Load Balancer target
"$SAM" local generate-event alb request --method GET --path v1/models --body '' > alb-models.json
"$SAM" local generate-event alb request --method POST --path v1/chat/completions --body "$CHAT" > alb-chat.json

"$PY" - <<'PATCH'
import copy
import json
from pathlib import Path


def load(name: str) -> dict:
    return json.loads(Path(name).read_text())


def save(name: str, event: dict) -> None:
    Path(name).write_text(json.dumps(event, indent=2) + "\n")


for name in ("rest-v1-chat.json", "http-v2-chat.json", "alb-chat.json"):
    event = load(name)
    event["headers"]["content-type"] = "application/json"
    if "multiValueHeaders" in event:
        event["multiValueHeaders"]["content-type"] = ["application/json"]
    save(name, event)

for src, dst in (("http-v2-models.json", "function-url-models.json"),
                 ("http-v2-chat.json", "function-url-chat.json")):
    event = copy.deepcopy(load(src))
    ctx = event["requestContext"]
    ctx["apiId"] = "abcdefghijklmnopqrstuvwxyz0123"
    ctx["domainName"] = "abcdefghijklmnopqrstuvwxyz0123.lambda-url.us-east-1.on.aws"
    ctx["domainPrefix"] = "abcdefghijklmnopqrstuvwxyz0123"
    ctx.pop("authorizer", None)
    ctx.pop("authentication", None)
    event.pop("pathParameters", None)
    event.pop("stageVariables", None)
    save(dst, event)
PATCH
echo "wrote $(ls ./*.json | wc -l) events to $(pwd)"
