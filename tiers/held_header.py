"""A GGUF header parse that runs once, on whichever thread needs it first.

A cold start's loader parses the verified header chunks for the handle, `/v1/models` and
the next load of the same blob, but not before the first answer when the model was built
early (llama.cpp reads the header itself; the parse is 0.065 CPU s of GIL-bound Python
that on two vCPUs would be taken from the fetch and the build). Held that way, the parse
must still never be waited for by something the first answer waits on: so nobody waits
for the holding thread. `get` parses right there if nobody has begun, or waits for the
parse under way, and every later `get` returns the same header (or raises the same
error); `abandon` (the load failed) makes a parse that has not begun never begin.
"""

from __future__ import annotations

import threading
from typing import Callable

from tiers.errors import CorruptModel
from tiers.gguf_header import GGUFHeader


class HeldHeader:
    """`parse()` run at most once: by the first `get`, unless `abandon` came first."""

    def __init__(self, parse: Callable[[], GGUFHeader], label: str) -> None:
        self._parse: Callable[[], GGUFHeader] | None = parse
        self._label = label
        self._lock = threading.Lock()
        self._header: GGUFHeader | None = None
        self._error: BaseException | None = None

    def get(self) -> GGUFHeader:
        """The header: parsed now on this thread, or by the parse under way (the lock),
        or earlier. Raises the parse's error (CorruptModel), every time."""
        with self._lock:
            if self._parse is not None:
                parse, self._parse = self._parse, None   # the bytes go with it
                try:
                    self._header = parse()
                except BaseException as exc:
                    self._error = exc
        if self._error is not None:
            raise self._error
        assert self._header is not None
        return self._header

    def abandon(self) -> None:
        """The load failed: a parse not begun never begins (a `get` then raises); one
        under way finishes first (so whatever it announces comes before the failure)."""
        with self._lock:
            if self._parse is not None:
                self._parse = None
                self._error = CorruptModel(f"{self._label}: its load failed; the GGUF "
                                           "header was not parsed")

    @property
    def begun(self) -> bool:
        """True once a parse ran or was abandoned (what `get` returns is settled)."""
        with self._lock:
            return self._parse is None
