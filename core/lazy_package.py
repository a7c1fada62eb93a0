"""A package's submodules without its `__init__`, which runs when the package is asked
for a name it lacks.

Some packages' `__init__` imports far more than the submodule strato uses: llama_cpp's
brings its high-level `Llama` class (numpy, jinja2, diskcache; core.engine.bindings),
prometheus_client's its exposition module (http.server, wsgiref, urllib, snappy;
core.metric_collectors). On a cold start that is GIL-bound import work beside the
llama.cpp build and the fetch, for code the load never calls.

`register` puts the package in `sys.modules` without running its `__init__`; importing
a submodule then runs only that module (and what it imports; a submodule's `from . import
sibling` asks the package, so import the sibling first). The package finishes its
`__init__` the first time anything asks it for a name it lacks (PEP 562's module
`__getattr__`): `from llama_cpp import Llama` or `prometheus_client.REGISTRY` elsewhere in
the process keep working, they just pay for that import themselves.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

_lock = threading.Lock()


def register(name: str) -> None:
    """`name` in sys.modules, its `__init__` not run yet (a no-op once it is there)."""
    with _lock:
        if name in sys.modules:
            return
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        package = importlib.util.module_from_spec(spec)
        package.__getattr__ = _completer(package)  # type: ignore[method-assign]
        sys.modules[name] = package


def _completer(package: ModuleType) -> Any:
    """The package's module `__getattr__` until its `__init__` has run: runs it (once,
    under a lock: two threads may ask at once) and answers from the result."""
    once = threading.Lock()
    name_of = package.__name__

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
            raise AttributeError(f"module {name_of!r} has no attribute {name!r}") from None

    return __getattr__
