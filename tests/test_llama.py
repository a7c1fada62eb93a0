"""LlamaEngine against the real Gemma 3 270M: loading, generation semantics (stop strings,
max_tokens, EOS, usage, seeds, penalties), admission errors, cancellation, embeddings."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Settings
from core.engine.llama import LlamaEngine, is_oom
from core.engine.protocol import GenerationRequest, SamplingParams, TokenEvent
from core.errors import BadRequest, ContextOverflow, QueueFull
from tests.polling import async_wait_until
from tiers.errors import CorruptModel, ObjectNotFound

STORY = "Once upon a time, in a small village by the sea, there lived"


def run(engine: LlamaEngine, prompt: str, max_tokens: int = 24, **kw) -> list[TokenEvent]:
    sampling = kw.pop("sampling", SamplingParams(temperature=0))

    async def go() -> list[TokenEvent]:
        req = GenerationRequest(prompt=prompt, max_tokens=max_tokens, sampling=sampling, **kw)
        return [ev async for ev in engine.generate(req)]

    return asyncio.run(go())


def text_of(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


def test_info_describes_the_model(engine, gemma_path) -> None:
    assert engine.info.architecture == "gemma3"
    assert engine.info.n_ctx == 1024
    assert engine.info.n_ctx_train >= 1024
    assert engine.info.size_bytes == os.path.getsize(gemma_path)
    assert "Q4_K" in (engine.info.file_type or "")


def test_max_tokens_gives_length_and_usage(engine) -> None:
    events = run(engine, STORY, max_tokens=16)
    last = events[-1]
    assert last.finish_reason == "length"
    assert last.completion_tokens == 16
    assert last.prompt_tokens == len(engine.tokenize(STORY))
    assert all(e.finish_reason is None for e in events[:-1])
    assert len(text_of(events)) > 0


def test_greedy_is_deterministic(engine) -> None:
    assert text_of(run(engine, STORY)) == text_of(run(engine, STORY))


def test_stop_string_cuts_and_never_leaks(engine) -> None:
    full = text_of(run(engine, STORY, max_tokens=32))
    words = full.split()
    assert len(words) > 4, full
    stop = " " + words[3]  # a word from the middle of the real continuation
    events = run(engine, STORY, max_tokens=32, stop=(stop,))
    assert events[-1].finish_reason == "stop"
    assert text_of(events) == full[:full.index(stop)]
    assert stop not in text_of(events)


def test_end_of_generation_token_stops_with_stop(engine) -> None:
    # The default model is a base model that rarely ends a turn by itself; a grammar that
    # is complete after "yes" leaves only end-of-generation tokens to sample.
    prompt = engine.render_chat([{"role": "user", "content": "Reply with just the word: yes"}])
    events = run(engine, prompt, max_tokens=50, grammar='root ::= "yes"')
    assert events[-1].finish_reason == "stop"
    assert text_of(events) == "yes"  # the EOG token itself is not rendered
    assert events[-1].completion_tokens < 50


def test_seed_makes_sampling_reproducible(engine) -> None:
    def sample(seed: int) -> str:
        return text_of(run(engine, STORY, max_tokens=32,
                           sampling=SamplingParams(temperature=1.2, top_k=0, top_p=1.0,
                                                   min_p=0.0, seed=seed)))

    assert sample(11) == sample(11)
    assert len({sample(11), sample(12), sample(13)}) > 1


def test_repeat_penalty_changes_greedy_output(engine) -> None:
    prompt = "1, 1, 1, 1, 1, 1, 1, 1, 1, 1,"
    plain = text_of(run(engine, prompt, max_tokens=24))
    penalised = text_of(run(engine, prompt, max_tokens=24,
                            sampling=SamplingParams(temperature=0, repeat_penalty=1.8,
                                                    presence_penalty=1.0)))
    assert plain != penalised
    assert penalised.count("1") < plain.count("1")


def test_multibyte_text_is_never_split(engine) -> None:
    ask = "「こんにちは」を日本語で三回書いて。"
    prompt = engine.render_chat([{"role": "user", "content": ask}])
    events = run(engine, prompt, max_tokens=40)
    text = text_of(events)
    assert any(ord(c) > 0x3000 for c in text), text
    assert "\ufffd" not in text


def test_context_overflow_raises_before_any_event(engine) -> None:
    long_prompt = "word " * 2000

    async def go() -> list[TokenEvent]:
        got = []
        async for ev in engine.generate(GenerationRequest(prompt=long_prompt, max_tokens=4)):
            got.append(ev)
        return got

    with pytest.raises(ContextOverflow) as info:
        asyncio.run(go())
    assert info.value.status == 400 and "1024" in info.value.message


def test_invalid_requests_are_bad_requests(engine) -> None:
    for req in (GenerationRequest(prompt=STORY, max_tokens=-1),
                GenerationRequest(prompt=STORY, max_tokens=4, n=0),
                GenerationRequest(prompt=STORY, max_tokens=4, n=engine.settings.parallel + 1),
                GenerationRequest(prompt="", max_tokens=4, add_bos=False),
                GenerationRequest(prompt=STORY, max_tokens=4,
                                  sampling=SamplingParams(temperature=-1))):
        with pytest.raises(BadRequest):
            asyncio.run(_drain(engine, req))


async def _drain(engine: LlamaEngine, req: GenerationRequest) -> list[TokenEvent]:
    return [ev async for ev in engine.generate(req)]


def test_queue_full_is_refused_with_retry_after(gemma_path) -> None:
    eng = LlamaEngine.load(str(gemma_path), name="tiny-queue",
                           settings=Settings(threads=1, ctx=256, parallel=1, max_queue=1))

    async def go() -> None:
        first = eng.submit(GenerationRequest(prompt=STORY, max_tokens=48))
        await first.__anext__()  # running in the only slot
        second = eng.submit(GenerationRequest(prompt=STORY, max_tokens=4))  # waits
        assert eng.queue_depth() == 1
        with pytest.raises(QueueFull) as info:
            await eng.generate(GenerationRequest(prompt=STORY, max_tokens=4)).__anext__()
        assert info.value.status == 429 and info.value.retry_after >= 1
        # The running stream was not cut off by the newer requests.
        rest = [ev async for ev in first]
        assert rest[-1].finish_reason == "length" and rest[-1].completion_tokens == 48
        assert [ev async for ev in second][-1].completion_tokens == 4

    try:
        asyncio.run(go())
    finally:
        eng.close()


def test_a_burst_that_fits_the_free_slots_is_never_refused(gemma_path) -> None:
    """max_queue counts requests beyond the free slots, not those the next step admits."""
    eng = LlamaEngine.load(str(gemma_path), name="tiny-burst",
                           settings=Settings(threads=1, ctx=512, parallel=4, max_queue=1))

    async def go() -> list[int]:
        streams = [eng.submit(GenerationRequest(prompt=STORY, max_tokens=3)) for _ in range(4)]
        with pytest.raises(QueueFull):  # a fifth waits; a sixth is one too many
            eng.submit(GenerationRequest(prompt=STORY, max_tokens=3))
            eng.submit(GenerationRequest(prompt=STORY, max_tokens=3))
        return [[ev async for ev in s][-1].completion_tokens for s in streams]

    try:
        assert asyncio.run(go()) == [3, 3, 3, 3]
    finally:
        eng.close()


def test_closing_the_stream_cancels_and_frees_cells(engine) -> None:
    async def go() -> int:
        agen = engine.generate(GenerationRequest(prompt=STORY, max_tokens=500))
        await agen.__anext__()
        await agen.__anext__()
        running = [s for s in engine.scheduler.slots() if s.busy]
        assert len(running) == 1 and running[0].cached_tokens > 0
        await agen.aclose()  # what a client disconnect does to the handler's generator
        assert await async_wait_until(lambda: engine.scheduler.running() == 0)
        return running[0].id

    slot = asyncio.run(go())
    assert engine.scheduler.running() == 0
    after = engine.scheduler.slots()[slot]
    assert not after.busy
    assert after.cached_tokens == 0  # its KV cells were removed


def test_embeddings_are_normalised_and_distinct(engine) -> None:
    async def go():
        return await engine.embed(["The cat sat on the mat.", "The cat sat on the mat.",
                                   "Quarterly revenue grew by four percent."])

    vectors, n_tokens = asyncio.run(go())
    assert len(vectors) == 3 and n_tokens > 10
    for v in vectors:
        assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-3)
    assert vectors[0] == vectors[1]
    assert vectors[0] != vectors[2]


def test_embeddings_beside_running_generation(engine) -> None:
    async def go():
        agen = engine.generate(GenerationRequest(prompt=STORY, max_tokens=24))
        gen_task = asyncio.create_task(_collect(agen))
        vectors, _ = await engine.embed("hello")
        return await gen_task, vectors

    events, vectors = asyncio.run(go())
    assert events[-1].completion_tokens == 24 and len(vectors) == 1


async def _collect(agen) -> list[TokenEvent]:
    return [ev async for ev in agen]


def test_loads_from_an_anonymous_memory_file(gemma_path) -> None:
    """The RAM tier hands llama.cpp /proc/self/fd/N of a memfd: no disk path at all."""
    fd = os.memfd_create("strato-test-model")
    try:
        with open(gemma_path, "rb") as src:
            while chunk := src.read(16 << 20):
                os.write(fd, chunk)
        eng = LlamaEngine.load(f"/proc/self/fd/{fd}", name="memfd",
                               settings=Settings(threads=1, ctx=256, parallel=1))
        try:
            assert eng.info.size_bytes == os.path.getsize(gemma_path)
            assert run(eng, STORY, max_tokens=4)[-1].completion_tokens == 4
        finally:
            eng.close()
    finally:
        os.close(fd)


def test_on_tensors_comes_once_before_the_tensors_are_mapped(tmp_path, gemma_path) -> None:
    """`on_tensors` (where a lone build gives back its CPU: core.engine.own_core) is
    called once, on the loading thread, when llama.cpp turns to the tensors: the model
    file is not mapped yet then, and is once the load returns. It rests on a llama.cpp
    log line (a llama.cpp that words it otherwise fails here), seen by strato's log
    callback even after llama-cpp-python's package, imported in full, installed its own."""
    import ctypes
    import shutil
    import threading

    from llama_cpp import _logger  # llama-cpp-python's own log callback

    from core.engine import llama as engine_module

    engine_module._init_backend()    # as after an earlier load, then what its import does:
    engine_module.ll.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    model = tmp_path / "m.gguf"        # a file of its own: no other engine maps it
    shutil.copyfile(gemma_path, model)

    def mapped() -> bool:
        with open("/proc/self/maps") as maps:
            return any(line.rstrip().endswith(str(model)) for line in maps)

    calls: list[tuple[int, bool]] = []
    eng = LlamaEngine.load(str(model), name="tensors", settings=Settings(threads=1, ctx=256,
                                                                         parallel=1),
                           on_tensors=lambda: calls.append((threading.get_ident(), mapped())))
    try:
        assert calls == [(threading.get_ident(), False)]
        assert mapped()
    finally:
        eng.close()


def test_missing_file_is_object_not_found(tmp_path) -> None:
    with pytest.raises(ObjectNotFound):
        LlamaEngine.load(str(tmp_path / "nope.gguf"), name="x", settings=Settings())


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_gguf_is_corrupt_model(tmp_path, gemma_path, kind) -> None:
    bad = tmp_path / f"{kind}.gguf"
    if kind == "garbage":
        bad.write_bytes(b"not a gguf at all" * 100)
    else:
        with open(gemma_path, "rb") as src:
            bad.write_bytes(src.read(4 << 20))
    # The error carries llama.cpp's own reason, not only "could not load".
    reason = "invalid magic" if kind == "garbage" else "failed to read"
    with pytest.raises(CorruptModel, match=f"could not load.*{reason}"):
        LlamaEngine.load(str(bad), name="x", settings=Settings(threads=1, ctx=256, parallel=1))


OOM_CHILD = """
import resource, sys
from core.config import Settings
from core.engine.llama import LlamaEngine, _init_backend
from core.errors import status_of
_init_backend()
status = [l for l in open("/proc/self/status") if l.startswith("VmSize")][0]
headroom = int(sys.argv[2]) << 20   # room for the vocabulary, not the 253 MB mapping
resource.setrlimit(resource.RLIMIT_AS, (int(status.split()[1]) * 1024 + headroom,) * 2)
try:
    LlamaEngine.load(sys.argv[1], name="x", settings=Settings(threads=1, ctx=256, parallel=1))
except Exception as exc:
    print(type(exc).__name__, status_of(exc)[0], exc)
"""


def test_a_model_that_does_not_fit_is_out_of_memory_not_corrupt(gemma_path) -> None:
    # A real allocation failure inside llama.cpp: a child process whose address space
    # has 128 MiB left. It must read as OutOfMemory (what the model manager answers with
    # fewer GPU layers and smaller variants), never as a corrupt model.
    out = subprocess.run([sys.executable, "-c", OOM_CHILD, str(gemma_path), "128"],
                         capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.startswith("OutOfMemory 503 "), out.stdout + out.stderr[-2000:]
    assert "out of memory (" in out.stdout          # with llama.cpp's own reason


def test_oom_messages() -> None:
    """llama.cpp's and its backends' wording for memory exhaustion, device and host."""
    assert is_oom("CUDA error: out of memory")
    assert is_oom("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 900 MiB on device 0: "
                  "cudaMalloc failed")
    assert is_oom("llama_model_load: error loading model: mmap failed: Cannot allocate memory")
    assert is_oom("ggml_gallocr_reserve_n_impl: failed to allocate CPU buffer of size 269747200")
    assert is_oom("llama_model_load: error loading model: std::bad_alloc")
    assert not is_oom("failed to load model: invalid magic")
