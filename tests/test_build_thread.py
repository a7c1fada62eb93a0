"""core.engine.build_thread: the heap the llama.cpp build grows into is read-write before
the build starts, and the model manager's loads run on that thread."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.engine.build_thread import RESERVE

# On a fresh thread: (optionally) reserve, then the size of the read-write mapping that a
# small allocation of that thread lands in (its arena's heap, as far as it is usable now).
PROBE = """
import ctypes, sys, threading
from core.engine.build_thread import reserve_heap
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
out = []
def probe():
    if sys.argv[1] == "reserve":
        out.append(reserve_heap())
    ptr = libc.malloc(64)
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= ptr < hi:
                out.append((perms, hi - lo))
thread = threading.Thread(target=probe)
thread.start()
thread.join()
print(out)
"""


def heap_after(mode: str) -> list:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                          text=True, check=True)
    return eval(done.stdout)       # noqa: S307 - a list of ints and tuples we printed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's thread heaps")
def test_a_reserved_heap_is_read_write_before_anything_grows_into_it() -> None:
    (perms, size), = heap_after("plain")
    assert perms == "rw-p" and size < RESERVE // 4     # glibc grows it page by page
    reserved, (perms, size) = heap_after("reserve")
    assert reserved >= RESERVE * 0.99
    assert perms == "rw-p" and size >= reserved        # one mapping, writable, kept
