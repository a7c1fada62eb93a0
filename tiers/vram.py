"""VRAM placement: how many layers of a model go on the GPU, and what to try on OOM.

The vram "tier" is the loaded engine itself, so there is nothing to store here: only
arithmetic over free device memory and the per-layer byte sizes a manifest (or GGUF
header) gives. Everything but `free_device_memory` is pure and unit-tested with given
capacities; a CPU-only machine has no NVML and therefore no vram tier.

llama.cpp's `n_gpu_layers` counts repeating blocks offloaded from the *last* one down;
a value above the block count also offloads the output layer. We follow that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

DEFAULT_RESERVE = 512 << 20     # CUDA context, scratch buffers: never plan to the last byte


def free_device_memory(device: int = 0) -> int | None:
    """Free bytes on GPU `device` via NVML, or None when there is no NVIDIA GPU/driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # any NVML failure means "no usable GPU"
        return None


@dataclass(frozen=True)
class Placement:
    n_gpu_layers: int        # value for llama.cpp (n_layers + 1 = everything incl. output)
    gpu_bytes: int           # model bytes planned on the GPU
    all_on_gpu: bool


def choose_gpu_layers(free_bytes: int, layer_bytes: Sequence[int], other_bytes: int = 0,
                      *, context_bytes: int = 0, reserve: int = DEFAULT_RESERVE) -> Placement:
    """Most layers that fit in `free_bytes` after the KV cache and a reserve.

    `layer_bytes[i]` is block i's tensor bytes; `other_bytes` the output layer (and
    norms) that only move to the GPU once every block is there.
    """
    budget = free_bytes - reserve - context_bytes
    used, count = 0, 0
    for size in reversed(layer_bytes):
        if used + size > budget:
            break
        used += size
        count += 1
    if count == len(layer_bytes) and used + other_bytes <= budget:
        return Placement(len(layer_bytes) + 1, used + other_bytes, True)
    return Placement(count, used, False)


def oom_attempts(first: Placement, n_layers: int) -> list[int]:
    """`n_gpu_layers` to try, in order, when a load runs out of memory.

    The planned placement first; then everything but the output layer; then a quarter
    of the blocks fewer at a time, down to none on the GPU. (After that the model
    manager tries the manifest's smaller variants, each with its own placement.)
    """
    seq = [first.n_gpu_layers]
    step = max(1, n_layers // 4)
    n = min(first.n_gpu_layers, n_layers)
    if first.n_gpu_layers > n_layers:
        seq.append(n_layers)
    while n > 0:
        n = max(0, n - step)
        seq.append(n)
    return list(dict.fromkeys(seq))


class VramTier:
    """The configured `vram:auto` / `vram:<size>`: a capacity source for placement."""

    kind = "vram"
    name = "vram"

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity     # None = ask NVML each time

    def free_bytes(self) -> int | None:
        free = free_device_memory()
        if free is None:
            return None
        return min(free, self.capacity) if self.capacity is not None else free

    def place(self, layer_bytes: Sequence[int], other_bytes: int = 0,
              context_bytes: int = 0) -> Placement:
        free = self.free_bytes()
        if free is None:
            return Placement(0, 0, False)
        return choose_gpu_layers(free, layer_bytes, other_bytes, context_bytes=context_bytes)
