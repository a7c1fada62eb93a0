"""AWS Lambda entry point: `handler = Mangum(app)` plus Powertools.

Everything expensive happens at import, i.e. in Lambda's init phase: settings are read
and validated, the model service is built and the default model is loaded, so the
first request pays nothing extra (and init time is not billed at the invoke rate on
on-demand functions). A model that fails to load does not crash the init: the app
still starts and answers 503 with the cause, which is easier to debug than a
restarting sandbox.

The app runs on one event loop created here and reused by every invocation, because
the model service and its engines are bound to the loop they were created on. Mangum
runs with lifespan "off": its lifespan cycle would start and stop the app on every
invocation.

Observability: Logger (JSON lines, `function_request_id` on each), Metrics (EMF in
namespace "strato": ColdStart, TTFT, PromptTokens, CompletionTokens) and Tracer
(X-Ray; off unless POWERTOOLS_TRACE_DISABLED=false, since X-Ray costs per trace).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from mangum import Mangum

from core import metrics as prometheus
from core.config import from_env
from handlers.http import Completed, build_service, create_app

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "strato")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "strato"),
                  service=SERVICE)
tracer = Tracer(service=SERVICE, disabled=os.environ.get(
    "POWERTOOLS_TRACE_DISABLED", "true").strip().lower() not in ("false", "0"))


def record(done: Completed) -> None:
    """One generation's cost as EMF metrics (flushed by log_metrics per invocation)."""
    if done.ttft is not None:
        metrics.add_metric(name="TTFT", unit=MetricUnit.Milliseconds, value=done.ttft * 1e3)
    metrics.add_metric(name="PromptTokens", unit=MetricUnit.Count, value=done.prompt_tokens)
    metrics.add_metric(name="CompletionTokens", unit=MetricUnit.Count,
                       value=done.completion_tokens)


def _init() -> tuple[Any, Any, float, str | None]:
    """Settings, service and the default model, on the loop every invocation will use."""
    started = time.perf_counter()
    settings = from_env()
    logger.info("strato init", extra={"settings": settings.public()})
    service = build_service(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    error = None
    try:
        engine = loop.run_until_complete(service.engine(None))
        logger.info("model loaded", extra={"model": engine.info.name,
                                           "seconds": round(time.perf_counter() - started, 3)})
    except Exception as exc:  # the app answers 503 with the cause; see module docstring
        error = f"{type(exc).__name__}: {exc}"
        logger.exception("default model failed to load during init")
    prometheus.cold_starts_total.inc()
    return settings, service, time.perf_counter() - started, error


settings, service, init_seconds, init_error = _init()
app = create_app(settings, service, observer=record)
_asgi = Mangum(app, lifespan="off")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway REST (v1), HTTP API (v2), Function URL and ALB events."""
    response = _asgi(event, context)
    # Nothing runs between invokes on on-demand Lambda (the sandbox is frozen): a tier
    # copy this invoke's load started (the EFS copy the next instance reads) is
    # finished before the invoke ends. No copy pending: no wait.
    asyncio.get_event_loop().run_until_complete(service.finish_copies())
    # One access line per invocation; Logger adds function_request_id to it.
    logger.info("request", extra={
        "path": event.get("rawPath") or event.get("path"),
        "method": event.get("httpMethod") or event.get("requestContext", {})
        .get("http", {}).get("method"),
        "status": response.get("statusCode")})
    return response
