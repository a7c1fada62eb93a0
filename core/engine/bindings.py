"""llama_cpp's ctypes bindings (`llama_cpp.llama_cpp`) without the rest of the package.

`import llama_cpp` runs the package's `__init__`, which imports its high-level `Llama`
class and with it numpy, jinja2, diskcache and the chat formats: about 0.17 s of a cold
start's GIL (the import of the bindings alone takes 0.02 s) for code strato never calls,
since the engine drives llama.cpp through the C API. On a two-vCPU function that import
runs beside the manifest and header reads, and the model build waits for it.

`load` therefore imports the bindings module with the package registered but its
`__init__` not run (core.lazy_package): the package completes it the first time anything
asks it for a name it lacks, so `from llama_cpp import Llama` elsewhere still works.
"""

from __future__ import annotations

from types import ModuleType

from core import lazy_package

from core.engine import cpu_variant  # noqa: F401  # isort: skip  (must precede llama_cpp)

PACKAGE = "llama_cpp"


def load() -> ModuleType:
    """The `llama_cpp.llama_cpp` module: llama.cpp's C API as ctypes functions."""
    lazy_package.register(PACKAGE)
    import llama_cpp.llama_cpp as api

    return api
