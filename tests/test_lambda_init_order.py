"""Lambda init begins the default model's load before Powertools, Mangum and the HTTP
app are imported, so the load overlaps those imports; the init loop, run by a thread
meanwhile, comes back to the main thread with the model loaded on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from tests.lambda_runtime import lambda_env

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import asyncio, json, sys, threading
import core.serving.manager as manager

seen = {}
real_load = manager.ModelManager._load

async def watched(self, key, ref):
    seen.update({m: m in sys.modules
                 for m in ("starlette", "mangum", "aws_lambda_powertools")})
    seen["thread"] = threading.current_thread().name
    return await real_load(self, key, ref)

manager.ModelManager._load = watched
import handlers.aws_lambda as fn

async def loaded():
    return [m.name for m in fn.service.models()], asyncio.get_running_loop() is fn.loop

names, same_loop = fn.loop.run_until_complete(loaded())
print(json.dumps({"seen": seen, "names": names, "same_loop": same_loop,
                  "runner_alive": fn._runner.is_alive(), "main": threading.main_thread().name}))
"""


def test_the_load_begins_before_the_web_stack_is_imported(gemma_path: Path) -> None:
    no_api = SimpleNamespace(address="127.0.0.1:9")   # the probe polls no Runtime API
    env = lambda_env(no_api, extra={  # type: ignore[arg-type]
        "STRATO_MODEL": str(gemma_path), "STRATO_CTX": "256", "STRATO_THREADS": "2",
        "STRATO_TIERS": "ram:1GiB"})
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["seen"] == {"starlette": False, "mangum": False,
                           "aws_lambda_powertools": False, "thread": "strato-init-loop"}
    assert got["names"] == [str(gemma_path)]           # loaded, on the loop handed back
    assert got["same_loop"] is True and got["runner_alive"] is False
