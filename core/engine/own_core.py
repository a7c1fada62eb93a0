"""A CPU of its own for the llama.cpp build, while the rest of a cold start shares the others.

On a cold start three things want the CPU at once: the build (vocabulary, tensor table,
context: serial C code, one thread), the fetch (16 threads receiving, faulting the RAM
tier's memfd in, verifying) and the Python that is left (the metrics import, the event
loop). Left to the kernel's fair scheduler on a 2-vCPU function, the fetch's many
runnable threads took about 40% of the build's CPU: the 270M model's build took 0.55-0.61
s beside the fetch against 0.42-0.44 s alone, and the first token waited for it.

So while the build runs, every other thread of the process keeps off one CPU (the
affinity of each task in /proc/self/task, which the threads they start inherit), and the
build thread, left as it was, gets that CPU to itself as far as this process goes. Unlike
a lower priority (nice, which an unprivileged thread can never raise again) this is
undone at once: `release` gives every thread back the CPUs it had. The model manager
releases when llama.cpp turns from the vocabulary and metadata (serial CPU work) to the
tensors (`LlamaEngine.load(on_tensors=...)`): mapping them faults in the blob's pages,
memory work like the fetch's own, which on the 4B shape took 1.2-1.6 s and held the
fetch to one CPU meanwhile when the release came only at the gate. Measured with
alternating cold `strato run`s (medians of 12 and 5): first token 0.925 -> 0.855 s for
Gemma 3 270M (its build 0.57 -> 0.50 s), 3.84 -> 3.63 s for the 4B shape. Keeping only
the fetch's threads off gave nothing measurable: the Python beside them took the freed
CPU.

The model manager asks for it only when no other model is loaded: a model that serves
while another builds keeps every CPU for its decode. Best effort: with one CPU, off
Linux, or where the kernel refuses, nothing changes.
"""

from __future__ import annotations

import os
import threading

_TASKS = "/proc/self/task"


class OwnCore:
    """While entered, the other threads of this process keep off one of the calling
    thread's CPUs; `release` (or leaving) gives them back what they had."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.cpu: int | None = None          # the CPU kept free, while kept
        self._saved: dict[int, set[int]] = {}   # the threads narrowed, and their CPUs
        self._seen: set[int] = set()            # every thread there was then
        self._all: set[int] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> "OwnCore":
        if self.enabled:
            self._keep_off()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _keep_off(self) -> None:
        try:
            self._all = os.sched_getaffinity(0)
            me = threading.get_native_id()
            tasks = [int(t) for t in os.listdir(_TASKS)]
        except (AttributeError, OSError):    # not Linux, or no /proc
            return
        if len(self._all) < 2:
            return
        self.cpu = max(self._all)
        self._seen = set(tasks)
        for tid in tasks:
            if tid == me:
                continue
            try:
                before = os.sched_getaffinity(tid)
                if len(before) > 1 and self.cpu in before:
                    os.sched_setaffinity(tid, before - {self.cpu})
                    self._saved[tid] = before
            except OSError:                  # the thread ended, or the kernel refused
                continue

    def release(self) -> None:
        """Every thread narrowed gets its CPUs back, and a thread started meanwhile (it
        inherited a narrower set) the build thread's; a thread that kept off that CPU
        before is left as it is. Idempotent."""
        with self._lock:
            if self.cpu is None:
                return
            kept, self.cpu = self.cpu, None
            saved, self._saved = self._saved, {}
            try:
                tasks = [int(t) for t in os.listdir(_TASKS)]
            except OSError:
                tasks = list(saved)
            for tid in tasks:
                if tid not in saved and tid in self._seen:
                    continue
                try:
                    if kept not in os.sched_getaffinity(tid):
                        os.sched_setaffinity(tid, saved.get(tid, self._all))
                except OSError:
                    continue
