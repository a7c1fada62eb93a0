"""`LlamaEngine`: one loaded GGUF served by a continuous-batching scheduler.

The engine owns the llama.cpp model, one generation context (run by `core.engine.scheduler`)
and, lazily, a separate embedding context. Handlers see only the `Engine` protocol of
`core.engine.protocol`: an async stream of `TokenEvent`s per request.

Admission happens at the first `__anext__` of `generate()` (or eagerly with `submit()`):
that is where a prompt longer than the context raises `ContextOverflow` and a full queue
raises `QueueFull`, before any event is yielded, so a handler that awaits the first event
before sending headers can still answer with a proper 400 / 429.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
from collections.abc import AsyncGenerator
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from core.config import Settings
from core.engine import bindings
from core.engine.protocol import GenerationRequest, ModelInfo, TokenEvent
from core.engine.sampling import SamplerChain, validate
from core.errors import BadRequest, ContextOverflow, OutOfMemory
from tiers.errors import CorruptModel, ObjectNotFound

log = logging.getLogger(__name__)
ll = bindings.load()   # llama.cpp's C API (not the llama_cpp package's Llama class)

if TYPE_CHECKING:
    # The scheduler and the chat templates (with core.openai's tools and schemas) are
    # imported where they are first used, a model's engine and its first chat: on a
    # cold start the build waits for this module's import, and for nothing of theirs
    # (core.engine.background_import imports them beside the build).
    from core.engine.scheduler import Scheduler, Sequence

_backend_lock = threading.Lock()
_backend_ready = False

DEFAULT_STEP_TOKENS = 512
EMBED_CTX = 512  # llama.cpp computes logits for every token of an embedding input


_LLAMA_LOG = logging.getLogger("strato.llama_cpp")
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}


_recent = threading.local()   # this thread's llama.cpp warnings/errors during a load
# What llama.cpp logs (llama_model::load_tensors) when it has read the vocabulary and
# metadata and turns to the tensors: their mapping and, with repacking or a GPU, copies.
_TENSORS_LINE = b"load_tensors: loading model tensors"


@ll.llama_log_callback
def _forward_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    """llama.cpp logs -> Python logging. Only warnings and errors are worth a line by
    default: a load prints hundreds of INFO lines that would drown the JSON logs.

    llama.cpp logs on the calling thread, and a failed load returns only NULL: the
    warnings and errors of the current load are kept per thread so the exception can
    say *why* (bad magic, truncated tensor, device out of memory)."""
    lvl = _GGML_LEVELS.get(level, logging.DEBUG)
    if text.startswith(_TENSORS_LINE):
        on_tensors = getattr(_recent, "on_tensors", None)
        if on_tensors is not None:
            _recent.on_tensors = None
            on_tensors()
    if lvl >= logging.WARNING:
        line = text.decode("utf-8", errors="replace").rstrip()
        lines = getattr(_recent, "lines", None)
        if lines is not None and line:
            lines.append(line)
            del lines[:-20]
        if _LLAMA_LOG.isEnabledFor(lvl):
            _LLAMA_LOG.log(lvl, line)


_OOM_TEXT = ("out of memory", "cudamalloc", "failed to allocate", "erroroutofdevicememory",
             "insufficient memory", "cannot allocate memory", "bad_alloc")


def is_oom(message: str) -> bool:
    """Does a llama.cpp log line read like memory exhaustion: device (CUDA, Metal,
    Vulkan) or host (ENOMEM from mmap or malloc)? The wording is llama.cpp's and its
    backends', so it is recognised here, beside the only code that sees it."""
    text = message.lower()
    return any(s in text for s in _OOM_TEXT)


def load_failure(what: str, reasons: Seq[str]) -> Exception:
    """The typed error for a NULL from llama.cpp, given the warnings/errors it logged.

    Device or host memory exhaustion is OutOfMemory (the model manager then tries fewer
    GPU layers and smaller variants); anything else is a model llama.cpp cannot use.
    """
    detail = "; ".join(reasons[-3:])
    if any(is_oom(r) for r in reasons):
        return OutOfMemory(f"{what}: out of memory ({detail})")
    return CorruptModel(f"{what}: not a valid GGUF, truncated, or an unsupported "
                        f"architecture" + (f" ({detail})" if detail else ""))


def _init_backend() -> None:
    """llama_backend_init once per process; llama.cpp's logs routed to `_forward_log` at
    every call (every load): llama-cpp-python's package, once imported in full (its
    `_logger`, e.g. by `from llama_cpp import Llama` anywhere in the process), installs
    its own callback, and a load's failure reasons and `on_tensors` come through ours."""
    global _backend_ready
    with _backend_lock:
        ll.llama_log_set(_forward_log, ctypes.c_void_p(0))
        if not _backend_ready:
            ll.llama_backend_init()
            _backend_ready = True


def _held_at_gate(hold: Callable[[], bool]) -> Any:
    """A llama.cpp progress callback that calls `hold` once, before the first tensor.

    llama.cpp calls its progress callback before it touches each tensor's bytes (its
    load-time copies: weights repacked for the CPU, uploads to a GPU) and after every
    step that reads only the header (vocabulary, metadata, tensor table, buffers), so
    the first call is the last moment to wait for bytes still streaming in
    (tiers.gate). `hold` returning False (the bytes failed verification) aborts the
    load: llama.cpp frees what it built and returns NULL.
    """
    passed: list[bool] = []

    @ll.llama_progress_callback
    def callback(_progress: float, _user: ctypes.c_void_p) -> bool:
        if not passed:
            try:
                passed.append(bool(hold()))
            except BaseException:  # noqa: BLE001 - an exception cannot cross into C
                log.exception("the tensor gate failed")
                passed.append(False)
        return passed[0]

    return callback


def _meta(model: Any, key: str) -> str | None:
    buf = ctypes.create_string_buffer(256)
    n = ll.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    if n < 0:
        return None
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        ll.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", errors="replace")


def _step_tokens(settings: Settings) -> int:
    return int(settings.extra.get("step_tokens", DEFAULT_STEP_TOKENS))


def _generation_params(settings: Settings, n_ctx: int) -> Any:
    """Context parameters for the batching scheduler's one context."""
    step = _step_tokens(settings)
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = step                 # at most one step's tokens per llama_decode
    cparams.n_ubatch = min(step, 512)
    cparams.n_seq_max = settings.parallel
    threads = settings.threads or os.cpu_count() or 1
    cparams.n_threads = cparams.n_threads_batch = threads
    # One unified cache shared by all sequences: a sequence may use the whole context,
    # and llama_memory_seq_cp can share prefix cells between sequences without a copy.
    cparams.kv_unified = True
    # Full-size sliding-window caches (Gemma 3): a partial seq_rm / seq_cp of a prefix
    # stays valid, which prefix reuse depends on.
    cparams.swa_full = True
    cparams.flash_attn_type = int(settings.extra.get("flash_attn",
                                                     ll.LLAMA_FLASH_ATTN_TYPE_AUTO))
    cparams.no_perf = True
    return cparams


@dataclass(frozen=True)
class _Loaded:
    model: Any
    vocab: Any
    ctx: Any
    n_gpu_layers: int = 0


class ParkedModel:
    """A llama.cpp model kept after its engine closed, to be taken by the next load of
    the same bytes.

    Why: most of a load is llama.cpp building the vocabulary (0.9 s of Gemma 3's 1 s
    on two cores, for 262k tokens), not the weights, which a model over the RAM tier
    maps from the tier's memfd. A parked model holds no context (no KV cache, no
    compute buffers): only the vocabulary, the repacked tensors and the mapping.
    Owned by exactly one place at a time; `free` is idempotent.
    """

    def __init__(self, model: Any, path: str, n_gpu_layers: int) -> None:
        self.model, self.path, self.n_gpu_layers = model, path, n_gpu_layers

    def take(self, path: str, n_gpu_layers: int) -> Any:
        """The model, handed over, if it was loaded from `path` the same way; else None
        (and it stays here, for `free`)."""
        if self.model is None or (path, n_gpu_layers) != (self.path, self.n_gpu_layers):
            return None
        model, self.model = self.model, None
        return model

    def free(self) -> None:
        if self.model is not None:
            ll.llama_model_free(self.model)
            self.model = None


class LlamaEngine:
    """A loaded model; satisfies `core.engine.protocol.Engine`."""

    def __init__(self, path: str, name: str, settings: Settings, loaded: _Loaded,
                 info: ModelInfo) -> None:
        self.path = path
        self.settings = settings
        self.info = info
        self._model, self._vocab, self._ctx = loaded.model, loaded.vocab, loaded.ctx
        self._n_gpu_layers = loaded.n_gpu_layers
        self._n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self._bos = ll.llama_vocab_bos(self._vocab)
        self._add_bos_default = bool(ll.llama_vocab_get_add_bos(self._vocab))
        self._bos_text = self._token_text(self._bos)
        self._eos_text = self._token_text(ll.llama_vocab_eos(self._vocab))
        self._embed_ctx: Any = None
        self._embed_pool = ThreadPoolExecutor(1, thread_name_prefix=f"strato-embed-{name}")
        self._closed = False
        from core.engine.scheduler import Scheduler

        self.scheduler = Scheduler(
            llama=ll, ctx=self._ctx, n_ctx=info.n_ctx, n_slots=settings.parallel,
            step_tokens=_step_tokens(settings),
            max_queue=settings.max_queue, piece=self._piece, is_eog=self._is_eog,
            bos=self._bos if self._add_bos_default else -1, name=name)

    # -- loading ------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, *, name: str, settings: Settings, n_gpu_layers: int = 0,
             parked: ParkedModel | None = None,
             hold: Callable[[], bool] | None = None,
             on_tensors: Callable[[], None] | None = None) -> "LlamaEngine":
        """Load a GGUF (a file or /proc/self/fd/N) and start its scheduler. Blocking.

        A `parked` model of the same path and GPU layers is taken instead of loading
        the file again (only a new context is made). With `hold`, the file may still be
        filling in: llama.cpp builds what the header describes, and `hold` is called
        before anything reads a tensor byte; it returning False abandons the model
        (the caller raises the reason). A load that copies weights (repacking, GPU
        layers) is held before its first copy (`_held_at_gate`); one that only maps
        them is held after the context is made, so the whole build overlaps the fetch
        and the first decode still comes after the gate.

        `on_tensors` is called once, on this thread, when llama.cpp has built the
        vocabulary and metadata and turns to the tensors (its `load_tensors` log line;
        not at all for a parked model, or if a llama.cpp logs otherwise).

        Raises ObjectNotFound when the path does not exist, OutOfMemory when llama.cpp
        logged an allocation failure, and CorruptModel when it cannot load the bytes
        (bad magic, truncated tensors, unknown arch): both name llama.cpp's reason.
        """
        if not os.path.exists(path):
            raise ObjectNotFound(f"model file not found: {path}")
        _init_backend()
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        # Off, the CPU weights stay in the mapping: the load reads no tensor byte.
        mparams.use_extra_bufts = settings.repack
        copies = settings.repack or n_gpu_layers != 0
        gate = _held_at_gate(hold) if hold is not None and copies else None
        if gate is not None:
            mparams.progress_callback = gate       # referenced until the load returns
        _recent.lines, _recent.on_tensors = [], on_tensors
        try:
            model = parked.take(path, n_gpu_layers) if parked is not None else None
            if model is None:
                model = ll.llama_model_load_from_file(path.encode(), mparams)
            if not model:
                raise load_failure(f"llama.cpp could not load {path} "
                                   f"({os.path.getsize(path)} bytes)", _recent.lines)
            try:
                n_ctx_train = ll.llama_model_n_ctx_train(model)
                n_ctx = min(settings.ctx, n_ctx_train) if n_ctx_train > 0 else settings.ctx
                cparams = _generation_params(settings, n_ctx)
                ctx = ll.llama_init_from_model(model, cparams)
                if not ctx:
                    raise load_failure(f"llama.cpp could not create a context for {path} "
                                       f"(n_ctx={n_ctx}, parallel={settings.parallel})",
                                       _recent.lines)
                if hold is not None and gate is None and not hold():
                    ll.llama_free(ctx)
                    raise CorruptModel(f"{path}: its bytes failed verification after the "
                                       "build; the model is abandoned")
            except BaseException:
                ll.llama_model_free(model)
                raise
        finally:
            _recent.lines = _recent.on_tensors = None
        vocab = ll.llama_model_get_vocab(model)
        template = ll.llama_model_chat_template(model, None)
        desc = ctypes.create_string_buffer(256)
        ll.llama_model_desc(model, desc, len(desc))
        info = ModelInfo(
            name=name,
            architecture=_meta(model, "general.architecture") or "unknown",
            n_ctx=n_ctx,
            n_ctx_train=n_ctx_train,
            chat_template=template.decode("utf-8", errors="replace") if template else None,
            file_type=desc.value.decode(errors="replace").split(" ", 2)[-1] or None,
            size_bytes=os.path.getsize(path),
        )
        log.info("loaded %s: %s, n_ctx=%d, parallel=%d", name, desc.value.decode(errors="replace"),
                 n_ctx, settings.parallel)
        return cls(path, name, settings, _Loaded(model, vocab, ctx, n_gpu_layers), info)

    # -- tokens -------------------------------------------------------------------
    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (ll.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _is_eog(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self._vocab, token))

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """Tokens of `text`; special tokens in the text (`<start_of_turn>`) are parsed.

        A chat template that writes `{{ bos_token }}` itself plus add_bos would give
        two BOS tokens, which degrades Gemma's output; the duplicate is dropped.
        """
        data = text.encode("utf-8")
        add = add_bos and self._add_bos_default
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add, True)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self._vocab, data, len(data), buf, cap, add, True)
        tokens = list(buf[:n])
        if add and len(tokens) >= 2 and tokens[0] == tokens[1] == self._bos:
            tokens.pop(0)
        return tokens

    def detokenize(self, tokens: Seq[int]) -> str:
        """Text of `tokens` with special tokens spelled out (llama-server's /detokenize)."""
        bad = next((i for i, t in enumerate(tokens) if not 0 <= t < self._n_vocab), None)
        if bad is not None:
            raise BadRequest(f"tokens[{bad}] is {tokens[bad]}, not a token of this model "
                             f"(0..{self._n_vocab - 1})", param=f"tokens[{bad}]")
        ids = (ll.llama_token * max(1, len(tokens)))(*tokens)
        cap = len(tokens) * 16 + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(cap)
            n = ll.llama_detokenize(self._vocab, ids, len(tokens), buf, cap, False, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            cap = -n
        raise RuntimeError("llama_detokenize kept asking for a larger buffer")

    def render_chat(self, messages: Seq[dict[str, Any]], tools: Seq[Any] = ()) -> str:
        from core.engine import chat_template

        return chat_template.render(messages, template=self.info.chat_template,
                                    architecture=self.info.architecture,
                                    bos_token=self._bos_text, eos_token=self._eos_text,
                                    tools=tools)

    # -- generation ---------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> "Stream":
        """Validate and queue `request` now; raises BadRequest, ContextOverflow, QueueFull.

        Must be called on the event loop that will consume the returned stream.
        """
        if self._closed:
            raise BadRequest("model is closed")
        if request.max_tokens < 0:
            raise BadRequest("max_tokens must be at least 0", param="max_tokens")
        if not 1 <= request.n <= self.settings.parallel:
            raise BadRequest(f"n is {request.n}; this server runs at most "
                             f"{self.settings.parallel} sequences at once (STRATO_PARALLEL)",
                             param="n")
        validate(request.sampling)
        if request.prompt_tokens is not None:
            prompt = list(request.prompt_tokens)
            bad = next((t for t in prompt if not 0 <= t < self._n_vocab), None)
            if bad is not None:
                raise BadRequest(f"prompt token {bad} is outside this model's vocabulary "
                                 f"(0-{self._n_vocab - 1})", param="prompt")
        else:
            prompt = self.tokenize(request.prompt, add_bos=request.add_bos)
        if not prompt:
            raise BadRequest("prompt is empty", param="prompt")
        if len(prompt) >= self.info.n_ctx:
            raise ContextOverflow(
                f"prompt is {len(prompt)} tokens; this model's context is {self.info.n_ctx} "
                f"tokens (including the answer). Shorten the prompt.", param="messages")
        samplers: list[SamplerChain] = []
        try:
            for i in range(request.n):  # choice i draws from seed + i
                samplers.append(SamplerChain(ll, self._vocab, self._n_vocab,
                                             request.sampling.for_choice(i), request.grammar))
        except BaseException:
            for sampler in samplers:
                sampler.free()
            raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()

        def emit(item: TokenEvent | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone: nobody is listening
                for seq in seqs:
                    seq.cancelled = True

        from core.engine.scheduler import Sequence

        seqs = [Sequence(request=request, prompt=prompt, sampler=sampler, emit=emit, index=i)
                for i, sampler in enumerate(samplers)]
        try:
            self.scheduler.submit(*seqs)
        except BaseException:
            for sampler in samplers:
                sampler.free()
            raise
        return Stream(self.scheduler, seqs, queue)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        """Stream token events; closing the generator frees the sequence at once."""
        stream = self.submit(request)
        async with stream:
            async for event in stream:
                yield event

    async def embed(self, inputs: Seq[str]) -> tuple[list[list[float]], int]:
        """Mean-pooled, L2-normalised vectors, computed in a separate embedding context
        on its own thread so that embeddings never stall the generation scheduler."""
        if isinstance(inputs, str):
            inputs = [inputs]
        token_lists = [self.tokenize(text) for text in inputs]
        n_ctx = min(EMBED_CTX, self.info.n_ctx)
        for i, toks in enumerate(token_lists):
            if len(toks) > n_ctx:
                raise ContextOverflow(f"input[{i}] is {len(toks)} tokens; embeddings take at "
                                      f"most {n_ctx}", param="input")
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._embed_pool, self._embed_sync,
                                             token_lists, n_ctx)
        return vectors, sum(len(t) for t in token_lists)

    def _embed_sync(self, token_lists: list[list[int]], n_ctx: int) -> list[list[float]]:
        if self._embed_ctx is None:
            cparams = ll.llama_context_default_params()
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
            cparams.n_seq_max = 1
            cparams.embeddings = True
            cparams.pooling_type = ll.LLAMA_POOLING_TYPE_MEAN
            threads = self.settings.threads or os.cpu_count() or 1
            cparams.n_threads = cparams.n_threads_batch = threads
            cparams.no_perf = True
            self._embed_ctx = ll.llama_init_from_model(self._model, cparams)
            if not self._embed_ctx:
                raise RuntimeError("llama.cpp could not create the embedding context")
        ctx = self._embed_ctx
        n_embd = ll.llama_model_n_embd(self._model)
        out = []
        batch = ll.llama_batch_init(n_ctx, 0, 1)
        try:
            for toks in token_lists:
                ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
                for i, t in enumerate(toks):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, i, 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1
                batch.n_tokens = len(toks)
                if ll.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed while embedding")
                ptr = ll.llama_get_embeddings_seq(ctx, 0)
                vec = [float(ptr[i]) for i in range(n_embd)]
                norm = sum(v * v for v in vec) ** 0.5 or 1.0
                out.append([v / norm for v in vec])
        finally:
            ll.llama_batch_free(batch)
        return out

    def queue_depth(self) -> int:
        return self.scheduler.queue_depth()

    def close(self, *, park: bool = False) -> ParkedModel | None:
        """Stop the scheduler (waiting and running requests get ModelUnavailable), then
        free the contexts and the model, or with `park` hand the model back for a later
        `load` instead of freeing it. A model with layers on a GPU is never parked: its
        device memory is what the next model needs. Idempotent (a second call: None)."""
        if self._closed:
            return None
        self._closed = True
        self.scheduler.close()
        self._embed_pool.shutdown(wait=True)
        if self._embed_ctx is not None:
            ll.llama_free(self._embed_ctx)
            self._embed_ctx = None
        ll.llama_free(self._ctx)
        if park and self._n_gpu_layers == 0:
            return ParkedModel(self._model, self.path, self._n_gpu_layers)
        ll.llama_model_free(self._model)
        return None


class Stream:
    """The consumer side of one request's n sequences: iterate their events (each
    tagged with its answer's index); leaving early cancels them all."""

    def __init__(self, scheduler: Scheduler, seqs: list[Sequence],
                 queue: asyncio.Queue[TokenEvent | BaseException]) -> None:
        self._scheduler, self.seqs, self._queue = scheduler, seqs, queue
        self.seq = seqs[0]
        self._open = len(seqs)    # answers whose final event was not read yet
        self._finished = False  # consumer side: every final event (or an error) was read

    def __aiter__(self) -> "Stream":
        return self

    async def __anext__(self) -> TokenEvent:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if item.finish_reason is not None:
            self._open -= 1
            self._finished = self._open == 0
        return item

    async def __aenter__(self) -> "Stream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._finished:
            for seq in self.seqs:
                self._scheduler.cancel(seq)
