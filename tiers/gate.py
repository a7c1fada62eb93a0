"""The tensor gate: llama.cpp may build a model over a blob that is still streaming in.

A RAM-tier blob is a memfd sized in full before the first chunk lands; its unwritten
pages read back as zeros, they do not block. So the model build (vocabulary, metadata,
tensor table, buffers) can run on the header while the tensor bytes still stream, but
whatever *reads tensor bytes* must wait until every chunk is verified: llama.cpp's
load-time copies (weights repacked for the CPU, uploads to a GPU) and any decode.

`TensorGate` is that wait. The loader opens it once the whole blob is verified (its
commit to the RAM tier follows: a commit that fails fails the load, and the model built
is closed unserved), or fails it with the fetch's error; core.engine.llama holds
llama.cpp's tensor loading at the gate (its progress callback runs before the first
tensor's bytes are touched) and aborts the build when the gate fails, so no model is
ever built on bytes that were not verified.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from tiers.gguf_header import GGUFHeader


class TensorGate:
    """Opened when every byte of a blob is verified; failed with the reason otherwise."""

    def __init__(self) -> None:
        self._settled = threading.Event()
        self._error: BaseException | None = None

    def open(self) -> None:
        self._settled.set()

    def fail(self, error: BaseException) -> None:
        if not self._settled.is_set():
            self._error = error
            self._settled.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until settled; True when the bytes may be read, False when they must
        not be (failed, or still unsettled after `timeout`)."""
        return self._settled.wait(timeout) and self._error is None

    @property
    def settled(self) -> bool:
        return self._settled.is_set()

    @property
    def error(self) -> BaseException | None:
        return self._error


@dataclass
class EarlyBlob:
    """A blob still streaming into the RAM tier, offered for an early model build.

    `path` names a duplicate descriptor of the memfd, owned by whoever takes this and
    closed with `close()` once llama.cpp has opened and mapped it: the loader may close
    its own descriptor on failure at any moment, and a reused descriptor number must
    never make llama.cpp open a different file.
    """

    fd: int
    size: int
    header: GGUFHeader | None    # None when offered on the verified header chunks,
    gate: TensorGate = field(default_factory=TensorGate)  # before strato parsed them

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
