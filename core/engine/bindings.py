"""llama_cpp's ctypes bindings (`llama_cpp.llama_cpp`) without the rest of the package.

`import llama_cpp` runs the package's `__init__`, which imports its high-level `Llama`
class and with it numpy, jinja2, diskcache and the chat formats: about 0.17 s of a cold
start's GIL (the import of the bindings alone takes 0.02 s) for code strato never calls,
since the engine drives llama.cpp through the C API. On a two-vCPU function that import
runs beside the manifest and header reads, and the model build waits for it.

`load` therefore registers the package without running its `__init__`, then imports the
bindings module. The package finishes its `__init__` the first time anything asks it for
a name it lacks (PEP 562's module `__getattr__`): `from llama_cpp import Llama`,
`llama_cpp.__version__` and `import llama_cpp; llama_cpp.Llama(...)` elsewhere in the
process keep working, they just pay for that import themselves.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

from core.engine import cpu_variant  # noqa: F401  # isort: skip  (must precede llama_cpp)

PACKAGE = "llama_cpp"
_lock = threading.Lock()


def load() -> ModuleType:
    """The `llama_cpp.llama_cpp` module: llama.cpp's C API as ctypes functions."""
    with _lock:
        if PACKAGE not in sys.modules:
            spec = importlib.util.find_spec(PACKAGE)
            if spec is None or spec.loader is None:
                raise ModuleNotFoundError(f"No module named {PACKAGE!r}", name=PACKAGE)
            package = importlib.util.module_from_spec(spec)
            package.__getattr__ = _completer(package)  # type: ignore[method-assign]
            sys.modules[PACKAGE] = package
    import llama_cpp.llama_cpp as api

    return api


def _completer(package: ModuleType) -> Any:
    """The package's module `__getattr__` until its `__init__` has run: runs it (once,
    under a lock: two threads may ask at once) and answers from the result."""
    once = threading.Lock()

    def __getattr__(name: str) -> Any:
        with once:
            if package.__dict__.get("__getattr__") is __getattr__:
                del package.__dict__["__getattr__"]
                try:
                    assert package.__spec__ is not None and package.__spec__.loader
                    package.__spec__.loader.exec_module(package)
                except BaseException:
                    package.__getattr__ = __getattr__  # type: ignore[method-assign]
                    raise
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}") from None

    return __getattr__
