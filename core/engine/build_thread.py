"""The thread llama.cpp builds models on, with its malloc heap grown before the fetch.

glibc gives each thread but the main one a heap that it grows a few pages at a time, each
growth an `mprotect` call, and `mprotect` takes the process's memory-map lock for
writing. Building a 262k-token vocabulary grows the building thread's heap by 33 MB in
about 4,000 such calls. On a cold start the build runs while the fetch threads write the
RAM tier's memfd through its mapping, and each page they fault in takes that lock for
reading: measured with perf's scheduler trace, the build thread waited 0.06-0.13 s in
`mprotect` (uninterruptible, behind the faults), and every fault queued behind each
waiting `mprotect` in turn.

So loads run on one long-lived thread (`executor`) that, when it starts (as the model
manager is created, before any fetch), allocates and frees `RESERVE` bytes in pieces
small enough to come from its heap rather than from `mmap`. glibc keeps a heap's
protection when it shrinks (it only drops the pages), so the build then grows into
memory that is already read-write: about 4,000 `mprotect` calls became 3. Nothing is
touched or kept: the pieces are freed at once and hold no pages afterwards.

Only glibc on Linux does this; elsewhere the thread is a plain one.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

# Larger than the 33 MB a 262k-token vocabulary's build grows by, below a heap's 64 MB.
RESERVE = 40 << 20
# Under glibc's lowest mmap threshold (128 KiB): each piece comes from the thread's heap.
PIECE = 120_000

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def reserve_heap(nbytes: int = RESERVE) -> int:
    """Grow the calling thread's malloc heap by about `nbytes`, then free it all.
    Returns the bytes allocated (0 where it does not apply or failed). Never raises:
    as the executor's initializer, an exception would leave every load refused."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):   # musl's heap works otherwise
            return 0
        malloc, free = libc.malloc, libc.free
        malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        free.restype, free.argtypes = None, [ctypes.c_void_p]
        pieces = [malloc(PIECE) for _ in range(nbytes // PIECE)]
        for piece in pieces:
            free(piece)
    except Exception:  # noqa: BLE001 - best effort: the build only runs slower without it
        return 0
    return sum(PIECE for piece in pieces if piece)


def executor() -> ThreadPoolExecutor:
    """The build thread's executor, started (and its heap grown) on the first call."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="strato-build",
                                           initializer=reserve_heap)
            _executor.submit(int)      # start the thread now, not at the first load
        return _executor
