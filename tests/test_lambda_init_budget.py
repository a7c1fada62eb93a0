"""The on-demand init budget, tested as Lambda enforces its init limit.

The model comes from a range server capped at RATE bytes/s, so its download outlasts
LIMIT, the init limit the harness plays (Lambda's is 10 s): an init that has not polled
for work by then is killed and run again inside the first invoke.

- With the budget (STRATO_INIT_BUDGET=2): init returns in time with the load still
  running, nothing is killed, the first invoke waits for the model and is answered, and
  the store served the model's bytes exactly once.
- Without it (STRATO_INIT_BUDGET=0, the control): the harness kills the init, the re-run
  starts the download again, and the store serves more than one model's worth.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.counting_store import counting_store_fixture  # noqa: F401 - the fixture
from tests.lambda_runtime import Function, RuntimeApi, lambda_env

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 10.0          # seconds: Lambda's on-demand init limit
RATE = 16e6           # bytes/s: the 253 MB model needs about 16 s, past LIMIT


def chat_event() -> dict[str, Any]:
    return json.loads((ROOT / "events" / "http-v2-chat.json").read_text())


def run(gemma_path: Path, store: Any, budget: str) -> tuple[Function, Any]:
    (store.directory / "gemma.gguf").symlink_to(gemma_path)
    api = RuntimeApi()
    function = Function(api, lambda_env(api, extra={
        "STRATO_MODEL": f"{store.url}/gemma.gguf", "STRATO_INIT_BUDGET": budget,
        "STRATO_CTX": "512", "STRATO_THREADS": "2", "STRATO_TIERS": "ram:1GiB"}),
        init_limit=LIMIT)
    try:
        assert function.start().kind == "next"
        answer = function.invoke(chat_event())
    except BaseException:
        function.kill()
        api.close()
        raise
    function.kill()
    api.close()
    return function, answer


def status_and_text(answer: Any) -> tuple[int, str]:
    assert answer.ok, answer.body
    body = answer.body["body"]
    if answer.body.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return answer.body["statusCode"], body


def test_init_returns_within_budget_and_the_model_is_fetched_once(
        gemma_path: Path, counting_store: Any) -> None:
    store = counting_store(rate=RATE)
    function, answer = run(gemma_path, store, "2")
    assert function.killed_inits == 0
    status, text = status_and_text(answer)
    assert status == 200, text
    assert json.loads(text)["choices"][0]["message"]["content"]
    assert store.fetches_of(gemma_path.stat().st_size) == 1.0
    messages = [line.get("message") for line in function.json_lines()]
    # Init ended with the load under way; the load finished before the answer.
    assert messages.index("init budget reached; the model loads on and the first request "
                          "waits for it") < messages.index("model loaded")


@pytest.mark.parametrize("budget", ["0"])
def test_control_without_budget_the_init_is_killed_and_the_download_restarts(
        gemma_path: Path, counting_store: Any, budget: str) -> None:
    store = counting_store(rate=RATE)
    function, answer = run(gemma_path, store, budget)
    assert function.killed_inits == 1
    status, text = status_and_text(answer)
    assert status == 200, text
    assert store.fetches_of(gemma_path.stat().st_size) > 1.0
