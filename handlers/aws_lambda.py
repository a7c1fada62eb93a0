"""AWS Lambda entry point: `handler = Mangum(app)` plus Powertools, for every Lambda mode.

Lambda runs this module under its runtime interface client (`python -m awslambdaric
handlers.aws_lambda.handler`); importing it is the init phase. Init reads and checks
the settings for the mode Lambda started it in (handlers.lambda_modes: a setting the mode
cannot run fails init, reported through the Runtime API), builds the model service and
loads the default model. The load begins before Powertools, Mangum and the HTTP app are
imported (`_begin`), so its fetch and llama.cpp build overlap those imports. Init is
billed like an invocation on every kind of function (on-demand init too, since August
2025), so loading here costs the same as loading in the first request; doing it here
means the first request finds the model ready.

How long init waits for the model depends on the mode:

- on-demand: init returns once the process is `STRATO_INIT_BUDGET` seconds old (8 s by
  default, under Lambda's 10 s limit) with the load still running; the first request
  waits for it (`/ready` says when it is in). An init that overran the limit would be
  killed and run again inside the first invoke, restarting the download.
- provisioned concurrency, Managed Instances: init waits for the load.
- SnapStart: init waits for the load, and a model that fails to load fails init (a
  snapshot without its model is worth nothing, so the version must not publish). The
  runtime hooks (registered with snapshot_restore_py; awslambdaric runs them) warm the
  model before the snapshot and renew randomness, clients, credentials and metrics
  after each restore (handlers/snapstart.py).

Otherwise, a model that fails to load does not fail init: the function answers 503
with the cause, which is easier to debug than a sandbox that restarts, and a retry of
init would not load it either.

The app runs on one event loop created here and reused by every invocation, because
the model service and its engines are bound to the loop they were created on. Between
invocations that loop is idle, but a load keeps going: its byte fetch and llama.cpp
load run in threads. Mangum runs with lifespan "off": its lifespan cycle would start
and stop the app on every invocation.

Observability: Logger (JSON lines, `function_request_id` on each), Metrics (EMF in
namespace "strato": ColdStart, TTFT, PromptTokens, CompletionTokens) and Tracer
(X-Ray; off unless POWERTOOLS_TRACE_DISABLED=false, since X-Ray costs per trace).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from core.config import Settings, from_env
from core.serving import Engine, ModelManager, ModelService
from handlers import lambda_modes as lambda_env
from handlers.lambda_modes import Mode


def _begin(mode: Mode) -> tuple[Settings, ModelService, asyncio.AbstractEventLoop,
                                asyncio.Task[Engine] | None, threading.Thread | None]:
    """Init, first part: the settings for the mode, then the default model's load on
    the init loop, run by a thread while the rest of this module imports.

    Powertools, Mangum and the HTTP app (Starlette) take about 0.2 s to import on two
    vCPUs; begun before them, the load's fetch and its llama.cpp build (which run
    without the GIL) overlap that time instead of following it. The loop is handed back
    to the main thread by `_init`, once the imports are done.
    """
    settings = from_env()
    lambda_env.check(settings, mode)
    service = ModelManager(settings)
    loop = asyncio.new_event_loop()
    if service.default_model is None:
        return settings, service, loop, None, None
    load = loop.create_task(service.engine(None))
    runner = threading.Thread(target=loop.run_forever, name="strato-init-loop", daemon=True)
    runner.start()
    return settings, service, loop, load, runner


MODE = lambda_env.detect()
settings, service, loop, _load, _runner = _begin(MODE)

# The rest of the imports come after the load has begun (see _begin).
from aws_lambda_powertools import Logger, Metrics, Tracer  # noqa: E402
from aws_lambda_powertools.metrics import MetricUnit  # noqa: E402
from aws_lambda_powertools.metrics.provider import cold_start  # noqa: E402
from mangum import Mangum  # noqa: E402

from core import metrics as prometheus  # noqa: E402
from handlers import snapstart  # noqa: E402
from handlers.http import Completed, create_app  # noqa: E402

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


def _init(load: asyncio.Task[Engine] | None, runner: threading.Thread | None) -> None:
    """Init, second part: the loop back on the main thread, then as long a wait for
    the default model's load as the mode wants (see the module docstring)."""
    logger.info("strato init", extra={"settings": settings.public(), "mode": MODE.value})
    if runner is not None:
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
    asyncio.set_event_loop(loop)
    if load is not None:
        load.add_done_callback(_loaded)
        budget = lambda_env.init_budget(settings, MODE)
        wait = None if budget is None else max(0.0, budget - lambda_env.process_age())
        loop.run_until_complete(asyncio.wait({load}, timeout=wait))
        if not load.done():
            logger.info("init budget reached; the model loads on and the first request "
                        "waits for it", extra={"budget": budget, "model": service.default_model})
        elif (exc := load.exception()) is not None and MODE is Mode.SNAPSTART:
            raise exc                           # init error through the Runtime API
    prometheus.cold_starts_total.inc()


def _loaded(task: asyncio.Task[Engine]) -> None:
    """Log the end of the default model's load, whenever it comes (init or later)."""
    if task.cancelled():
        return
    if task.exception() is not None:
        logger.error("default model failed to load", extra={
            "error": f"{type(task.exception()).__name__}: {task.exception()}"})
    else:
        logger.info("model loaded", extra={"model": task.result().info.name,
                                           "process_age": round(lambda_env.process_age(), 3)})


def before_snapshot() -> None:
    """SnapStart, once init is done (handlers/snapstart.py says what and why)."""
    logger.info("snapshot", extra=loop.run_until_complete(snapstart.before_snapshot(service)))


def after_restore() -> None:
    """SnapStart, in each environment restored from the snapshot."""
    facts = snapstart.after_restore(service)
    metrics.clear_metrics()
    cold_start.reset_cold_start_flag()  # type: ignore[no-untyped-call]
    logger.info("restored", extra=facts)


_init(_load, _runner)
app = create_app(settings, service, observer=record)
_asgi = Mangum(app, lifespan="off")
if MODE is Mode.SNAPSTART:
    import snapshot_restore_py  # type: ignore[import-untyped]

    snapshot_restore_py.register_before_snapshot(before_snapshot)
    snapshot_restore_py.register_after_restore(after_restore)


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
