"""Graceful shutdown: on SIGTERM, finish what is in flight, refuse what is new, exit 0.

Cloud Run, Knative, ECS, Fly and Kubernetes send SIGTERM, wait a grace period, then
SIGKILL. uvicorn's own SIGTERM handling closes the listening socket at once, so a load
balancer still sending traffic gets connection errors, and after its graceful timeout
it cancels streams mid-way. Instead, while draining:

1. `/ready` answers 503 (the platform stops routing here), and so does every new
   request, with `Retry-After` (clients retry on another instance); `/health` stays 200
   so the instance is not killed as dead while it drains;
2. requests and streams already in flight run to their end, for at most
   STRATO_SHUTDOWN_GRACE seconds (default 25: inside the usual 30 s of Kubernetes and
   ECS; Cloud Run's default is 10 s, set the variable to fit);
3. then the server is told to exit the normal way: uvicorn closes the sockets and runs
   the lifespan shutdown, where the model service finishes (or leaves resumable) the
   tier copies and saves the promotion policy's history; the process exits 0.

Works under `strato serve` and `uvicorn handlers.http:app` alike: the handler is
installed from the app's lifespan (after uvicorn installed its own) and hands over to
the uvicorn server it replaced.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any, Callable

log = logging.getLogger("strato.http")


class Drain:
    """The in-flight request count and the draining flag, shared by the Gate middleware
    (which counts and refuses) and the SIGTERM handler (which waits)."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight; False if `timeout` passed first."""
        self._idle = asyncio.Event()
        if self.inflight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


def on_sigterm(drain: Drain, grace: float) -> Callable[[], None]:
    """Install the draining SIGTERM handler; returns the function that uninstalls it.

    Signal handlers live in the main thread only: elsewhere (a server run in a test
    thread) nothing is installed and the server's own handling stays.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    tasks: list[asyncio.Task[None]] = []

    def start() -> None:
        if drain.draining:
            return
        drain.draining = True
        tasks.append(loop.create_task(finish()))

    async def finish() -> None:
        log.info("SIGTERM: draining %d request(s), at most %gs", drain.inflight, grace)
        if await drain.wait_idle(grace):
            log.info("drained; shutting down")
        else:
            log.warning("%d request(s) still running after %gs; shutting down",
                        drain.inflight, grace)
        _exit_server(previous)

    def uninstall() -> None:
        signal.signal(signal.SIGTERM, previous)

    signal.signal(signal.SIGTERM, lambda signum, frame: loop.call_soon_threadsafe(start))
    return uninstall


def _exit_server(previous: Any) -> None:
    """Ask the server to stop. uvicorn's handler is a bound method of its Server: set
    `should_exit` on it directly (calling the handler would make uvicorn re-raise
    SIGTERM after shutdown, and the process would die of it instead of exiting 0)."""
    server = getattr(previous, "__self__", None)
    if server is not None and hasattr(server, "should_exit"):
        config = getattr(server, "config", None)
        if config is not None:   # the grace is spent: no second long wait on streams
            config.timeout_graceful_shutdown = 1.0
        server.should_exit = True
    elif callable(previous):
        previous(signal.SIGTERM, None)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
