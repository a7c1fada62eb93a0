"""Lambda Managed Instances: AWS_LAMBDA_MAX_CONCURRENCY=4 makes awslambdaric 4.x fork four
worker processes, each running init and polling for work, all sharing one /tmp.

The four must fetch the model once (the disk tier's cross-process lock: one fetches,
the others wait and open the committed blob) and hold one copy of the weights between
them (the blob is mmapped from /tmp, so its pages are one page cache; repacking, which
would copy weights into private memory in each process, is off by default). Memory is
measured as PSS: a page shared by four processes counts a quarter in each, so the
model mapping's PSS summed over the workers is one model, however many workers map it.
"""

from __future__ import annotations

import base64
import json
import queue
from pathlib import Path
from typing import Any

from tests.counting_store import counting_store_fixture  # noqa: F401 - the fixture
from tests.lambda_runtime import WAIT, Function, RuntimeApi, lambda_env

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4


def chat_event() -> dict[str, Any]:
    return json.loads((ROOT / "events" / "http-v2-chat.json").read_text())


def pss_kib(pid: int, needle: str | None = None) -> int:
    """PSS (KiB) of process `pid`: all of it, or only the mappings whose path has `needle`."""
    total, current = 0, ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            current = head[5] if len(head) > 5 else ""
        elif line.startswith("Pss:") and (needle is None or needle in current):
            total += int(head[1])
    return total


def test_workers_share_one_fetch_and_one_copy(gemma_path: Path, counting_store: Any,
                                              tmp_path: Path) -> None:
    store = counting_store()
    (store.directory / "gemma.gguf").symlink_to(gemma_path)
    size = gemma_path.stat().st_size
    tier = tmp_path / "tmp" / "strato"
    api = RuntimeApi()
    function = Function(api, lambda_env(api, extra={
        "AWS_LAMBDA_MAX_CONCURRENCY": str(WORKERS), "STRATO_MODEL": f"{store.url}/gemma.gguf",
        "STRATO_TIERS": f"disk:{tier}:1GiB", "STRATO_CTX": "512", "STRATO_THREADS": "1",
        "STRATO_PARALLEL": "1"}), workers=WORKERS)
    try:
        assert function.start().kind == "next"              # every worker polls
        boxes: list[queue.Queue[Any]] = [api.invoke(chat_event()) for _ in range(WORKERS)]
        answers = [box.get(timeout=WAIT) for box in boxes]
        for got in answers:
            assert got.ok and got.body["statusCode"] == 200, got.body
        texts = {json.loads(_body(a.body))["choices"][0]["message"]["content"]
                 for a in answers}
        assert len(texts) == 1                              # greedy: the same answer

        assert store.fetches_of(size) == 1.0
        blobs = list((tier / "blobs").glob("*.gguf"))
        assert len(blobs) == 1
        workers = function.pids()[1:]
        assert len(workers) == WORKERS
        mapped = [pss_kib(pid, blobs[0].name) for pid in workers]
        assert all(m > 0 for m in mapped)                   # each serves from the mapping
        assert sum(mapped) * 1024 <= size * 1.02            # ... which is one copy
        total = sum(pss_kib(pid) for pid in workers)
        print(f"\nmanaged instances, {WORKERS} workers: model mapping PSS "
              f"{sum(mapped) / 1024:.0f} MiB in all, total PSS {total / 1024:.0f} MiB "
              f"(model file {size / 2**20:.0f} MiB)")
    finally:
        function.kill()
        api.close()


def _body(payload: dict[str, Any]) -> str:
    body = payload["body"]
    return base64.b64decode(body).decode() if payload.get("isBase64Encoded") else body
