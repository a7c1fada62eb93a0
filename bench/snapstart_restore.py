"""Lambda cold start three ways, under the real runtime client: on-demand, SnapStart init
(what publishing a version pays), and "restored from SnapStart", approximated.

All three run `python -m awslambdaric handlers.aws_lambda.handler` against the test
Lambda Runtime API (tests/lambda_runtime.py) with the bundled Gemma 3 270M (253 MB)
served by a local HTTP range server, RAM tier only, 2 threads:

1. on-demand      process start -> init done (model fetched and loaded; the init budget
                  is off so init holds the whole load) -> first chat answer.
2. SnapStart init process start -> the snapshot point (/restore/next), including the
                  before-snapshot hook (one warm-up decode). Paid once per published
                  version, not per cold start.
3. restored       /restore/next answered -> after-restore hook done (reseed, new
                  clients, metrics reset) -> first chat answer, on the process that was
                  "snapshotted" (frozen and thawed with SIGSTOP/SIGCONT).

What row 3 cannot measure here: Firecracker resuming the microVM from the snapshot
(AWS reports a restore duration, typically a few hundred ms, growing with memory), and
the snapshot's pages being faulted in lazily on first touch: here the model's pages are
already resident, on Lambda the first decode after a restore reads them from the
snapshot cache. Row 3 is therefore a lower bound of a real restore; the ratio printed
is row 3 over row 1.

    .venv/bin/python bench/snapstart_restore.py
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.catalog.bundled import default_model_path
from tests.counting_store import CountingStore
from tests.lambda_runtime import Function, RuntimeApi, lambda_env

CHAT = json.dumps({"messages": [{"role": "user", "content": "Say hello in one word."}],
                   "max_tokens": 8, "temperature": 0})


def chat_event() -> dict:
    data = json.loads((ROOT / "events" / "http-v2-chat.json").read_text())
    data["body"] = base64.b64encode(CHAT.encode()).decode()
    data["isBase64Encoded"] = True
    return data


def answer(function: Function) -> float:
    start = time.perf_counter()
    got = function.invoke(chat_event())
    assert got.ok and got.body["statusCode"] == 200, got.body
    return time.perf_counter() - start


def run(init_type: str, url: str) -> dict[str, float]:
    api = RuntimeApi()
    env = {"STRATO_MODEL": url, "STRATO_CTX": "512", "STRATO_THREADS": "2",
           "STRATO_TIERS": "ram:1GiB", "STRATO_INIT_BUDGET": "0"}
    function = Function(api, lambda_env(api, init_type, extra=env))
    try:
        start = time.perf_counter()
        end = function.start()
        init = time.perf_counter() - start
        out = {"init": init}
        if init_type == "snap-start":
            assert end.kind == "restore_next", end
            function.freeze()
            function.thaw()
            start = time.perf_counter()
            api.restore()
            function.wait_line('"restored"')
            out["restore_hook"] = time.perf_counter() - start
        out["first_answer"] = answer(function)
        return out
    finally:
        function.kill()
        api.close()


def main() -> int:
    model = default_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        store = CountingStore(Path(tmp))
        (Path(tmp) / "model.gguf").symlink_to(model)
        url = f"{store.url}/model.gguf"
        try:
            on_demand = run("on-demand", url)
            snap = run("snap-start", url)
        finally:
            store.close()
    cold = on_demand["init"] + on_demand["first_answer"]
    restored = snap["restore_hook"] + snap["first_answer"]
    rows = [
        ("on-demand: init (fetch + load)", on_demand["init"]),
        ("on-demand: first answer", on_demand["first_answer"]),
        ("on-demand: cold start total", cold),
        ("SnapStart init incl. warm-up (per published version)", snap["init"]),
        ("restored: after-restore hook", snap["restore_hook"]),
        ("restored: first answer", snap["first_answer"]),
        ("restored from SnapStart (approx., lower bound)", restored),
    ]
    print(f"model: {model.name}, {model.stat().st_size / 1e6:.1f} MB; HTTP range server; "
          "awslambdaric under the test Runtime API; 2 threads")
    for name, seconds in rows:
        print(f"  {name:<56}{seconds:6.2f} s")
    print(f"  {'restored / on-demand cold start':<56}{restored / cold:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
