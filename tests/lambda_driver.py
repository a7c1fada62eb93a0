"""Run handlers.aws_lambda like the Lambda runtime does, in a fresh process.

A fresh interpreter is the only honest cold start: the module import is the init phase
(it loads the model), then every event is one invocation of `handler(event, context)`
in the same process, as in a warm sandbox. Usage:

    python -m tests.lambda_driver RESULTS.json EVENT.json [EVENT.json ...]

Each event may be followed by `::body=<json>` to replace its body (to send a streamed
or malformed request through the same generated event). Results (one per event: the
handler's return value and the wall time of the import) go to RESULTS.json; the
function's logs and EMF metrics go to stdout, as on Lambda.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Context:
    """The attributes of the Lambda runtime's context object that Powertools reads."""

    function_name: str = "strato-test"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:strato-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/strato-test"
    log_stream_name: str = "2026/11/22/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def with_body(event: dict[str, Any], body: str) -> dict[str, Any]:
    event = dict(event)
    event["body"] = base64.b64encode(body.encode()).decode()
    event["isBase64Encoded"] = True
    return event


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    started = time.perf_counter()
    from handlers import aws_lambda

    init_seconds = time.perf_counter() - started
    results = []
    for arg in argv[1:]:
        path, _, body = arg.partition("::body=")
        event = json.loads(Path(path).read_text())
        if body:
            event = with_body(event, body)
        context = Context()
        response = aws_lambda.handler(event, context)
        results.append({"event": arg, "request_id": context.aws_request_id,
                        "response": response})
    out.write_text(json.dumps({"init_seconds": init_seconds,
                               "init_error": aws_lambda.init_error,
                               "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
