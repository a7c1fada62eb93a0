"""What a process does around a Lambda SnapStart snapshot, for both Lambda front doors.

The snapshot freezes the whole microVM after init; every environment restored from it
starts from that one memory image. So, before the snapshot: the default model is loaded
into the RAM tier (the caller's init did that) and warmed with one decode, so its pages
and compute buffers are resident and in the image; network clients are dropped, since
their connections would be dead after a restore. After each restore: Python's RNG is
reseeded (every restored copy would otherwise draw the same numbers), clients are
dropped again so the next read makes new ones with credentials resolved now (temporary
credentials do not survive a snapshot), the metrics of the snapshotted environment are
zeroed and this restore counted as the new one's cold start, and the engines' scheduler
threads are checked to be running. llama.cpp seeds each unseeded request from
std::random_device, so sampling is already fresh per request.

handlers/aws_lambda.py runs these from the runtime hooks awslambdaric calls
(snapshot_restore_py); handlers/lambda_stream.py from the Lambda Web Adapter's hook
routes. Both return what they did, for the caller's log line.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from typing import Any

from core import metrics
from core.serving import Engine, GenerationRequest, ModelService, SamplingParams
from tiers import remote


async def before_snapshot(service: ModelService) -> dict[str, Any]:
    """Load (if init did not) and warm the default model; drop network clients."""
    warmed = None
    if service.default_model is not None:
        engine = await service.engine(None)
        await _warm(engine)
        warmed = engine.info.name
    remote.forget_clients()
    return {"warmed": warmed, "rng": rng_fingerprint()}


def after_restore(service: ModelService) -> dict[str, Any]:
    """Fresh randomness, clients and metrics; raises if the engines stopped running
    (a restore error: Lambda then discards this environment)."""
    random.seed(os.urandom(32))
    remote.forget_clients()
    metrics.reset()
    metrics.cold_starts_total.inc()
    schedulers = [t for t in threading.enumerate() if t.name.startswith("strato-sched")]
    if service.default_model is not None and service.ready() and not schedulers:
        raise RuntimeError("no engine scheduler thread is running after the restore")
    return {"rng": rng_fingerprint(), "schedulers_alive": len(schedulers)}


async def _warm(engine: Engine) -> None:
    """One greedy decode: the weights' pages and the compute buffers are touched once."""
    gen = engine.generate(GenerationRequest(prompt="Hello", max_tokens=1,
                                            sampling=SamplingParams(temperature=0.0)))
    try:
        async for event in gen:
            if event.finish_reason is not None:
                break
    finally:
        await gen.aclose()


def rng_fingerprint() -> str:
    """A short hash of Python's RNG state: logs show that a restore reseeded it."""
    return hashlib.blake2b(repr(random.getstate()).encode(), digest_size=8).hexdigest()
