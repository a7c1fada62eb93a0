"""Import llama_cpp on a thread, as early as a process knows it will load a model.

Importing llama.cpp's bindings (core.engine.bindings: the ctypes definitions of a few
thousand functions, loading libllama and libggml) and the engine takes 0.05-0.08 s, and
longer beside the rest of a cold start; the model build cannot begin before it has
finished. The model manager starts it when it is created, beside the rest of the set-up
and the manifest read (measured: starting it earlier, before the serving stack's own
imports, made those slower by as much as it gained: they all hold the GIL). A second
call does nothing; this module imports nothing heavy itself.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_thread: threading.Thread | None = None
# Set when the import has finished (or failed): a cold load starts its bulk fetch then,
# so the fetch threads do not take the GIL from the import the build is waiting for.
done = threading.Event()


def _import() -> None:
    from tiers.timing import span

    try:
        with span("import llama_cpp"):
            import core.engine.llama  # noqa: F401
    finally:
        done.set()
    # What the engine needs once llama.cpp has built the model (its scheduler) and at its
    # first chat (the templates, with core.openai's tools and schemas): about 0.035 s of
    # imports that no longer hold the build back, done while llama.cpp builds.
    import core.engine.chat_template  # noqa: F401
    import core.engine.scheduler  # noqa: F401


def start() -> None:
    """Begin the import on a daemon thread (once per process)."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_import, name="strato-import", daemon=True)
            _thread.start()
