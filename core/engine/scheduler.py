"""Continuous batching: one llama.cpp context, many sequences, one `llama_decode` per step.

One thread owns the context. Each step it

1. drops sequences whose client went away (their KV cells are removed at once),
2. admits waiting requests in FIFO order while a sequence slot and KV cells are free,
   reusing the longest cached prefix (its own idle slot in place, or another slot's cells
   through `llama_memory_seq_cp`),
3. builds one `llama_batch`: first one token for every decoding sequence, then chunks of
   prompts that are still being read, within `step_tokens` (so a 2,000-token prompt is
   spread over several steps and never pauses the streams already running),
4. calls `llama_decode` once, samples every sequence that produced logits with its own
   sampler chain, and pushes the text to that request's stream.

KV accounting is in cells (one per token per slot; cells shared through `seq_cp` are
counted twice, which only errs on the safe side). When a step would not fit, idle
prefix caches are evicted first; if running sequences alone outgrow the cache, the
youngest is preempted: its cells are dropped and it goes back to the head of the queue
with the tokens it already produced, to be recomputed later (vLLM's recompute policy).
The client sees a pause, never a truncated answer.

A finished sequence gives its slot back at once; its cells stay as a prefix cache for the
next turn of the same conversation until a request needs the room. A cancelled one
loses its cells in the step that notices it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from core import metrics
from core.engine.detokenizer import TextStream
from core.errors import ModelUnavailable, QueueFull
from core.engine.protocol import FinishReason, GenerationRequest, TokenEvent
from core.engine.sampling import SamplerChain

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequence:
    """One request's state, owned by the scheduler thread once submitted."""

    request: GenerationRequest
    prompt: list[int]
    sampler: SamplerChain
    emit: Callable[[TokenEvent | BaseException], None]
    tokens: list[int] = field(default_factory=list)  # prompt + generated
    n_past: int = 0            # tokens[:n_past] are in the KV cache of `slot`
    slot: int = -1
    generated: int = 0
    cancelled: bool = False
    done: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    last_token_at: float | None = None
    admitted_step: int | None = None   # introspection for tests and logs
    released_step: int | None = None
    reused_tokens: int = 0
    token_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)
        self.text = TextStream(self.request.stop)


@dataclass(eq=False)
class Slot:
    """A llama.cpp sequence id and the tokens whose KV cells it currently holds."""

    id: int
    cached: list[int] = field(default_factory=list)
    owner: Sequence | None = None
    last_used: int = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def retry_after_seconds(waiting: int, slots: int, mean_request_s: float) -> float:
    """How long a refused client should wait: the time for the queue ahead to drain."""
    return max(1.0, round(mean_request_s * (waiting + 1) / max(slots, 1), 1))


class Scheduler:
    """The thread that owns one llama.cpp context and runs continuous batching."""

    def __init__(self, *, llama: Any, ctx: Any, n_ctx: int, n_slots: int, step_tokens: int,
                 max_queue: int, piece: Callable[[int], bytes], is_eog: Callable[[int], bool],
                 name: str = "model") -> None:
        self._ll = llama
        self._ctx = ctx
        self._mem = llama.llama_get_memory(ctx)
        self.n_ctx = n_ctx
        self.step_tokens = step_tokens
        self.max_queue = max_queue
        self._piece = piece
        self._is_eog = is_eog
        self._slots = [Slot(i) for i in range(n_slots)]
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._mean_request_s = 5.0
        self._batch = llama.llama_batch_init(step_tokens, 0, 1)
        self.step = 0
        self.preemptions = 0
        # (step, tokens in batch, ((slot, tokens), ...)): bounded, for tests and debugging.
        self.trace: deque[tuple[int, int, tuple[tuple[int, int], ...]]] = deque(maxlen=4096)
        self._thread = threading.Thread(target=self._run, name=f"strato-sched-{name}",
                                        daemon=True)
        self._thread.start()

    # -- called from other threads -------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        """Queue `seq`, or raise QueueFull (with Retry-After) when the queue is full."""
        with self._cv:
            if self._stopping:
                raise ModelUnavailable("the model is shutting down")
            # Requests that the next step will admit into free slots are not "waiting":
            # a burst of N <= free slots must never be refused.
            free = sum(1 for s in self._slots if s.owner is None)
            if len(self._waiting) - free >= self.max_queue:
                raise QueueFull(
                    f"server busy: {len(self._waiting)} requests already waiting",
                    retry_after=retry_after_seconds(len(self._waiting), len(self._slots),
                                                    self._mean_request_s))
            self._waiting.append(seq)
            metrics.queue_depth.set(len(self._waiting))
            self._cv.notify()

    def cancel(self, seq: Sequence) -> None:
        """The client is gone: free the sequence at the start of the next step."""
        with self._cv:
            seq.cancelled = True
            self._cv.notify()

    def queue_depth(self) -> int:
        return len(self._waiting)

    def running(self) -> int:
        return len(self._running)

    def kv_cells_used(self) -> int:
        return sum(len(s.cached) for s in self._slots)

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()
        self._ll.llama_batch_free(self._batch)

    # -- the scheduler thread ------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._running:
                    self._cv.wait()
                if self._stopping:
                    break
                self._reap()
                self._admit()
            if self._running:
                try:
                    self._step()
                except Exception as exc:  # a bug must not leave clients hanging forever
                    log.exception("scheduler step failed")
                    for seq in list(self._running):
                        self._release(seq, keep_cache=False)
                        seq.emit(exc)
        shutdown = ModelUnavailable("the model was unloaded")
        with self._cv:
            for seq in list(self._running) + list(self._waiting):
                seq.done = True
                seq.sampler.free()
                seq.emit(shutdown)
            self._waiting.clear()
            self._running.clear()

    def _reap(self) -> None:
        """Drop cancelled sequences: waiting ones leave the queue, running ones their cells."""
        if any(s.cancelled for s in self._waiting):
            self._waiting = deque(s for s in self._waiting if not s.cancelled)
            metrics.queue_depth.set(len(self._waiting))
        for seq in [s for s in self._running if s.cancelled]:
            self._release(seq, keep_cache=False)

    def _free_cells(self) -> int:
        return self.n_ctx - self.kv_cells_used()

    def _admit(self) -> None:
        while self._waiting:
            seq = self._waiting[0]
            free = [s for s in self._slots if s.owner is None]
            if not free:
                return
            evictable = sum(len(s.cached) for s in free)
            # Room for its remaining prompt plus one more token for everyone running.
            need = len(seq.tokens) - seq.n_past + len(self._running) + 1
            if need > self._free_cells() + evictable:
                return
            self._waiting.popleft()
            metrics.queue_depth.set(len(self._waiting))
            self._assign(seq, free)

    def _assign(self, seq: Sequence, free: list[Slot]) -> None:
        """Give `seq` a slot, reusing the longest prefix of its tokens already cached."""
        limit = len(seq.tokens) - 1  # the last token must be decoded to get logits
        target = max(free, key=lambda s: (common_prefix(s.cached, seq.tokens), -s.last_used))
        own = min(common_prefix(target.cached, seq.tokens), limit)
        donor = max(self._slots, key=lambda s: common_prefix(s.cached, seq.tokens))
        shared = min(common_prefix(donor.cached, seq.tokens), limit)
        if shared > own and donor is not target:
            self._ll.llama_memory_seq_rm(self._mem, target.id, -1, -1)
            self._ll.llama_memory_seq_cp(self._mem, donor.id, target.id, 0, shared)
            reused = shared
        else:
            reused = own
            if not self._ll.llama_memory_seq_rm(self._mem, target.id, reused, -1):
                self._ll.llama_memory_seq_rm(self._mem, target.id, -1, -1)
                reused = 0
        target.cached = seq.tokens[:reused]
        target.owner = seq
        target.last_used = self.step
        seq.slot, seq.n_past = target.id, reused
        if seq.admitted_step is None:
            metrics.tokens_in_total.inc(len(seq.prompt))
            seq.reused_tokens = reused
        if reused:
            metrics.prefix_cache_hits_total.inc(reused)
        seq.admitted_step = self.step
        self._running.append(seq)

    def _release(self, seq: Sequence, *, keep_cache: bool) -> None:
        slot = self._slots[seq.slot]
        if not keep_cache:
            self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
            slot.cached = []
        slot.owner = None
        slot.last_used = self.step
        self._running.remove(seq)
        seq.released_step = self.step
        seq.done = True
        seq.sampler.free()

    def _preempt(self, seq: Sequence) -> None:
        """Out of KV cells: drop `seq`'s cells and requeue it first, tokens kept."""
        slot = self._slots[seq.slot]
        self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
        slot.cached, slot.owner = [], None
        self._running.remove(seq)
        seq.n_past, seq.slot = 0, -1
        self.preemptions += 1
        with self._cv:
            self._waiting.appendleft(seq)
            metrics.queue_depth.set(len(self._waiting))
        log.warning("KV cache full: preempted a sequence of %d tokens", len(seq.tokens))

    def _plan(self) -> list[tuple[Sequence, int, int, bool]]:
        """(seq, first position, token count, wants logits) for this step's batch."""
        entries = [(s, s.n_past, 1, True) for s in self._running
                   if len(s.tokens) - s.n_past == 1]
        budget = self.step_tokens - len(entries)
        for s in self._running:
            remaining = len(s.tokens) - s.n_past
            if remaining > 1 and budget > 0:
                take = min(remaining, budget)
                budget -= take
                entries.append((s, s.n_past, take, s.n_past + take == len(s.tokens)))
        return entries

    def _make_room(self, need: int) -> bool:
        """Evict idle prefix caches (least recently used first) until `need` cells fit."""
        idle = sorted((s for s in self._slots if s.owner is None and s.cached),
                      key=lambda s: s.last_used)
        while need > self._free_cells() and idle:
            slot = idle.pop(0)
            self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
            slot.cached = []
        return need <= self._free_cells()

    def _step(self) -> None:
        entries = self._plan()
        while not self._make_room(sum(e[2] for e in entries)) and len(self._running) > 1:
            self._preempt(self._running[-1])
            entries = self._plan()
        if not entries:
            return
        ll, batch = self._ll, self._batch
        outputs: list[tuple[Sequence, int]] = []
        n = 0
        for seq, start, count, wants in entries:
            for k in range(count):
                batch.token[n] = seq.tokens[start + k]
                batch.pos[n] = start + k
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.slot
                batch.logits[n] = 1 if (wants and k == count - 1) else 0
                n += 1
            if wants:
                outputs.append((seq, n - 1))
        batch.n_tokens = n
        rc = ll.llama_decode(self._ctx, batch)
        if rc == 1 and len(self._running) > 1:
            self._preempt(self._running[-1])  # fragmented cache: retry next step with less
            return
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}")
        self.step += 1
        self.trace.append((self.step, n, tuple((s.slot, c) for s, _, c, _ in entries)))
        metrics.batch_size.observe(len(entries))
        for seq, start, count, _ in entries:
            seq.n_past = start + count
            slot = self._slots[seq.slot]
            slot.cached = seq.tokens[:seq.n_past]
            slot.last_used = self.step
        for seq, idx in outputs:
            self._advance(seq, seq.sampler.sample(self._ctx, idx))
        metrics.kv_cells_used.set(self.kv_cells_used())

    def _advance(self, seq: Sequence, token: int) -> None:
        """Record one sampled token and push what the client may see of it."""
        now = time.monotonic()
        if seq.last_token_at is None:
            metrics.ttft_seconds.observe(now - seq.submitted_at)
        else:
            metrics.inter_token_seconds.observe(now - seq.last_token_at)
        seq.last_token_at = now
        seq.token_steps.append(self.step)
        seq.tokens.append(token)
        seq.generated += 1
        metrics.tokens_out_total.inc()
        finish: FinishReason | None = None
        if self._is_eog(token):
            text, finish = seq.text.flush(), "stop"
        else:
            text = seq.text.push(self._piece(token))
            if seq.text.stopped:
                finish = "stop"
            elif seq.generated >= seq.request.max_tokens or len(seq.tokens) >= self.n_ctx:
                text, finish = text + seq.text.flush(), "length"
        if finish is None:
            if text:
                seq.emit(TokenEvent(text=text))
            return
        self._release(seq, keep_cache=True)
        self._mean_request_s = 0.8 * self._mean_request_s + 0.2 * (now - seq.submitted_at)
        seq.emit(TokenEvent(text=text, finish_reason=finish, prompt_tokens=len(seq.prompt),
                            completion_tokens=seq.generated))
