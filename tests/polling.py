"""The one way tests wait for something that happens on another thread or process.

A predicate is polled until it holds; the deadline only bounds a hung test and is never
a timing claim (a busy CI machine makes the wait longer, not the test red).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL_S = 0.05


def wait_until(predicate: Callable[[], object], timeout: float = 60.0) -> bool:
    """True as soon as `predicate()` is truthy; its last value's truth at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_S)
    return bool(predicate())


async def async_wait_until(predicate: Callable[[], object], timeout: float = 60.0) -> bool:
    """`wait_until` for a test running on an event loop: the loop keeps running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(POLL_S)
    return bool(predicate())
