"""The streaming Lambda function's app: `handlers.http:app` plus the SnapStart hook routes.

StreamFunction runs uvicorn behind the Lambda Web Adapter (infra/lambda/run.sh), so no
Python runtime hook runs in it: the adapter owns the Lambda lifecycle. Since version
1.1.0 the adapter calls two opt-in HTTP hooks under SnapStart (a POST to
AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH before the snapshot, to
AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH after each restore, before traffic; a non-2xx
fails that phase; the adapter answers 403 to outside requests for those paths). This
module answers them with handlers/snapstart.py, the same work the API function's
runtime hooks do. Under SnapStart template.yaml also points the adapter's readiness
check at /ready, so init (and the snapshot) waits for the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from handlers import snapstart

BEFORE = "/_strato/snapstart/before-checkpoint"
AFTER = "/_strato/snapstart/after-restore"

log = logging.getLogger("strato.snapstart")
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Send) -> None:
    """ASGI: the two hook paths (POST) here, everything else (lifespan too) to the app."""
    from handlers import http

    inner = http.app
    if scope["type"] != "http" or scope["path"] not in (BEFORE, AFTER):
        await inner(scope, receive, send)
        return
    if scope["method"] != "POST":
        await _reply(send, 405, {"error": "POST only"})
        return
    service = inner.state.service
    try:
        if scope["path"] == BEFORE:
            facts = await snapstart.before_snapshot(service)
        else:
            facts = snapstart.after_restore(service)
    except Exception as exc:
        log.exception("SnapStart hook %s failed", scope["path"])
        await _reply(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
        return
    log.info("SnapStart hook %s: %s", scope["path"], facts)
    await _reply(send, 200, facts)


async def _reply(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
