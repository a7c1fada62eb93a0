"""An HTTP range server (tests/services.py's RangeHandler) that counts what it serves
and can be slowed to a fixed rate, shared by all its connections.

The Lambda tests ask it "how many times was the model fetched?" (bytes served / model
size) and use the rate cap to make a download outlast Lambda's init limit. The cap is a
token bucket in the server: it slows the source, it is not a wait in a test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.services import RangeHandler


class CountingStore:
    """Serves `directory` on 127.0.0.1; `rate` bytes/s in all (None: unlimited)."""

    def __init__(self, directory: Path, rate: float | None = None) -> None:
        self.directory = directory
        self.rate = rate
        self.requests = 0
        self.bytes_served = 0
        self._lock = threading.Lock()
        self._next_free = time.monotonic()
        store = self

        class Handler(RangeHandler):
            def send_head(self):  # type: ignore[override]
                with store._lock:
                    store.requests += 1
                return super().send_head()

            def copyfile(self, source: Any, outputfile: Any) -> None:  # type: ignore[override]
                remaining = getattr(self, "_remaining", None)
                while remaining is None or remaining > 0:
                    block = source.read(min(1 << 16, remaining or 1 << 16))
                    if not block:
                        break
                    store._throttle(len(block))
                    outputfile.write(block)
                    with store._lock:
                        store.bytes_served += len(block)
                    if remaining is not None:
                        remaining -= len(block)

        def make(*args: Any, **kwargs: Any) -> Handler:
            return Handler(*args, directory=str(directory), **kwargs)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _throttle(self, n: int) -> None:
        if self.rate is None:
            return
        with self._lock:
            start = max(self._next_free, time.monotonic())
            self._next_free = start + n / self.rate
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)   # the source's pace (a slow link), not a test's wait

    def fetches_of(self, size: int) -> float:
        """How many model-sized downloads the bytes served add up to."""
        return self.bytes_served / size

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="counting_store")
def counting_store_fixture(tmp_path: Path) -> Iterator[Any]:
    """Factory: counting_store(rate=None) -> CountingStore over a fresh directory."""
    made: list[CountingStore] = []

    def make(rate: float | None = None) -> CountingStore:
        directory = tmp_path / f"store{len(made)}"
        directory.mkdir()
        made.append(CountingStore(directory, rate))
        return made[-1]

    yield make
    for store in made:
        store.close()
