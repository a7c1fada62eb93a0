"""Lambda Managed Instances: memory and decode speed of N worker processes sharing one
model, with llama.cpp's weight repacking on and off.

awslambdaric 4.x forks AWS_LAMBDA_MAX_CONCURRENCY workers (here 4), each running init
and polling the test Lambda Runtime API (tests/lambda_runtime.py); the model (bundled
Gemma 3 270M) sits in one disk tier and is mmapped by every worker. On AVX2 llama.cpp
repacks Q4_K weights into an interleaved layout in private memory, so with repacking
on each worker holds its own copy of those tensors; off, all weights stay in the one
shared, page-cached mapping.

Printed per setting: total PSS of the workers (a shared page counts 1/N in each of N),
the model mapping's share of it, and decode tokens/s of one request on an otherwise
idle instance (64 tokens, 1 thread per worker; the median of ROUNDS requests, the two
settings running side by side and asked in turn); then the ratios off/on.

    .venv/bin/python bench/managed_instances.py
"""

from __future__ import annotations

import base64
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.catalog.bundled import default_model_path
from tests.lambda_runtime import Function, RuntimeApi, lambda_env
from tests.test_lambda_managed import pss_kib

WORKERS = 4
TOKENS = 64
ROUNDS = 7


def completion_event() -> dict:
    data = json.loads((ROOT / "events" / "http-v2-chat.json").read_text())
    data["rawPath"] = data["requestContext"]["http"]["path"] = "/v1/completions"
    body = json.dumps({"prompt": "Once upon a time,", "max_tokens": TOKENS,
                       "temperature": 0})
    data["body"] = base64.b64encode(body.encode()).decode()
    data["isBase64Encoded"] = True
    return data


def start(model: Path, repack: str, tmp: Path) -> tuple[RuntimeApi, Function]:
    """Four workers over their own copy of the model (so the two settings, running side
    by side, do not share page-cache pages and PSS)."""
    own = tmp / f"model-repack{repack}.gguf"
    shutil.copyfile(model, own)
    model = own
    api = RuntimeApi()
    function = Function(api, lambda_env(api, extra={
        "AWS_LAMBDA_MAX_CONCURRENCY": str(WORKERS), "STRATO_MODEL": str(model),
        "STRATO_TIERS": f"disk:{tmp / ('repack' + repack)}:1GiB", "STRATO_CTX": "512",
        "STRATO_THREADS": "1", "STRATO_PARALLEL": "1", "STRATO_REPACK": repack}),
        workers=WORKERS)
    function.start()
    return api, function


def tokens_per_second(function: Function) -> float:
    start = time.perf_counter()
    got = function.invoke(completion_event())
    seconds = time.perf_counter() - start
    assert got.ok and got.body["statusCode"] == 200, got.body
    body = got.body["body"]
    if got.body.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body)["usage"]["completion_tokens"] / seconds


def main() -> int:
    model = default_model_path()
    runs: dict[str, list[float]] = {"1": [], "0": []}
    with tempfile.TemporaryDirectory() as tmp:
        running = {repack: start(model, repack, Path(tmp)) for repack in ("1", "0")}
        try:
            for _ in range(ROUNDS):                 # alternate, so load hits both alike
                for repack, (_, function) in running.items():
                    runs[repack].append(tokens_per_second(function))
            results = {}
            for repack, (_, function) in running.items():
                workers = function.pids()[1:]
                results[repack] = {
                    "total_pss_mib": sum(pss_kib(p) for p in workers) / 1024,
                    "mapping_pss_mib": sum(pss_kib(p, f"model-repack{repack}.gguf")
                                           for p in workers) / 1024,
                    "tokens_per_second": statistics.median(runs[repack])}
        finally:
            for api, function in running.values():
                function.kill()
                api.close()
    print(f"model: {model.name}, {model.stat().st_size / 2**20:.0f} MiB; {WORKERS} workers "
          f"(AWS_LAMBDA_MAX_CONCURRENCY), 1 thread each, ctx 512; median of {ROUNDS} "
          "requests, alternating")
    for repack, r in results.items():
        print(f"  repack {'on ' if repack == '1' else 'off'}: total PSS {r['total_pss_mib']:6.0f} "
              f"MiB, model mapping {r['mapping_pss_mib']:5.0f} MiB, "
              f"{r['tokens_per_second']:5.1f} tokens/s (one request, {TOKENS} tokens)")
    on, off = results["1"], results["0"]
    print(f"  off / on: total PSS {off['total_pss_mib'] / on['total_pss_mib']:.2f}x, "
          f"tokens/s {off['tokens_per_second'] / on['tokens_per_second']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
