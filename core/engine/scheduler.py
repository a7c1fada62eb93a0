"""Continuous batching: one llama.cpp context, many sequences, one `llama_decode` per step.

One thread owns the context. Each pass is two halves:

- `schedule(state) -> StepPlan` is pure: from a snapshot of the slots, the queue and the
  running sequences it decides what this pass does, and touches nothing. It
  1. drops sequences whose client went away (waiting ones leave the queue, running ones
     lose their KV cells),
  2. admits waiting requests in FIFO order while a sequence slot and KV cells are free,
     reusing the longest cached prefix (its own idle slot's cells in place, or another
     slot's cells through `llama_memory_seq_cp`),
  3. fills the batch: first one token for every decoding sequence, then chunks of
     prompts still being read, within `step_tokens` (so a 2,000-token prompt is spread
     over several steps and never pauses the streams already running),
  4. makes room for it: idle prefix caches are evicted first (least recently used
     first); if running sequences alone outgrow the cache, the youngest is preempted.
- `Scheduler.execute(plan)` carries the plan out against llama.cpp (`seq_rm`, `seq_cp`,
  one `llama_decode`), samples every sequence that produced logits with its own sampler
  chain, and pushes the text to that request's stream.

Why the split: admission, the token budget and preemption are decisions about lists of
integers; as a pure function they are unit-tested without a model
(tests/test_scheduler_plan.py), and the thread that talks to llama.cpp only obeys.

KV accounting is in cells (one per token per slot; cells shared through `seq_cp` are
counted twice, which only errs on the safe side). A preempted sequence's cells are
dropped and it goes back to the head of the queue with the tokens it already produced,
to be recomputed later (vLLM's recompute policy): the client sees a pause, never a
truncated answer.

A finished sequence gives its slot back at once; its cells stay as a prefix cache for the
next turn of the same conversation until a request needs the room. A cancelled one
loses its cells in the pass that notices it.

A prompt's last token is always decoded alone, in a step after the rest of the prompt.
The step that samples the first token then looks the same whether the prompt was read
just now or found in the prefix cache (where the last token is decoded again to get its
logits): the same batch shape, the same float arithmetic, so a seeded request gives the
same text alone and after a prefix-cache hit. It costs one step of time to first token.

A request for n answers (`n` > 1) is admitted as a group, when n slots are free. The
first sequence reads the prompt; in the step its last prompt token is decoded, the others
take its cells with `llama_memory_seq_cp` (shared, not copied: the cache is unified) and
draw their first token from the same logits row, each with its own sampler. Shared cells
are counted once while the slot that lent them still holds them.

Log-probabilities are read from the raw logits rows before sampling. For a prompt that
must be scored (`prompt_logprobs`), every prompt row is requested, in chunks of at most
`SCORE_CHUNK` tokens (each row is a vocabulary of floats: 1 MiB for Gemma), and no cached
prefix is reused past the positions already scored.

Observers (tests, debugging) subscribe to a `StepReport` per pass; the scheduler itself
keeps no history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from types import ModuleType

from core import metrics
from core.engine.detokenizer import TextStream
from core.engine.protocol import FinishReason, GenerationRequest, TokenEvent, TokenLogprob
from core.engine.sampling import SamplerChain, describe, log_softmax_at
from core.errors import ModelUnavailable, QueueFull

log = logging.getLogger(__name__)

SCORE_CHUNK = 32  # prompt rows scored per step (logits memory: rows x vocabulary floats)


@dataclass(eq=False)
class Sequence:
    """One request's state, owned by the scheduler thread once submitted.

    Compared and hashed by identity: plans and reports refer to sequences, not values.
    """

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
    admitted: bool = False     # admitted once already (a preempted one comes back)
    reused_tokens: int = 0     # prompt tokens served from the prefix cache at admission
    submitted_at: float = field(default_factory=time.monotonic)
    last_token_at: float | None = None
    index: int = 0             # which of the request's n answers
    # n > 1: the first sequence lists the others until they take its prompt's cells;
    # each of them names it as `leader` until then.
    followers: list["Sequence"] = field(default_factory=list)
    leader: "Sequence | None" = None
    logprobs: list[TokenLogprob] = field(default_factory=list)   # not yet emitted
    prompt_scores: list[TokenLogprob] = field(default_factory=list)  # tokens 1.. of prompt
    prompt_reported: bool = False

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)
        self.text = TextStream(self.request.stop)

    @property
    def scoring(self) -> bool:
        """Its prompt's tokens are being scored and some are not yet."""
        return self.request.prompt_logprobs and len(self.prompt_scores) < len(self.prompt) - 1


@dataclass(eq=False)
class Slot:
    """A llama.cpp sequence id and the tokens whose KV cells it currently holds."""

    id: int
    cached: list[int] = field(default_factory=list)
    owner: Sequence | None = None
    last_used: int = 0
    # The first `shared` cells are also held by slot `lender` (llama_memory_seq_cp):
    # counted there, not here, while the lender keeps them.
    lender: int | None = None
    shared: int = 0


def cells_used(slots: Seq["Slot | _SlotView"]) -> int:
    """KV cells in use: every slot's tokens, cells shared through seq_cp counted once."""
    return sum(len(s.cached) - (s.shared if s.lender is not None else 0) for s in slots)


def cut(slots: Seq["Slot | _SlotView"], slot_id: int, keep: int) -> None:
    """Slot `slot_id` keeps only its first `keep` cells: slots that borrowed more from
    it now hold (and count) those cells alone, and it lends or borrows no more than it
    keeps."""
    for s in slots:
        if s.lender == slot_id and s.shared > keep:
            s.lender, s.shared = None, 0
    own = slots[slot_id]
    own.shared = min(own.shared, keep)
    if not own.shared:
        own.lender = None


def common_prefix(a: Seq[int], b: Seq[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def retry_after_seconds(waiting: int, slots: int, mean_request_s: float) -> float:
    """How long a refused client should wait: the time for the queue ahead to drain."""
    return max(1.0, round(mean_request_s * (waiting + 1) / max(slots, 1), 1))


# -- the plan ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerState:
    """What `schedule` reads: the scheduler's lists at one instant (taken under its lock).

    `slots[i].id == i`. `schedule` never mutates these objects.
    """

    slots: tuple[Slot, ...]
    waiting: tuple[Sequence, ...]
    running: tuple[Sequence, ...]
    n_ctx: int
    step_tokens: int
    step: int = 0


@dataclass(frozen=True)
class Admission:
    """A waiting sequence taking slot `slot` with the cells of its first `reuse` tokens.

    `copy_from` names another slot whose cells are shared with `slot` (`seq_cp`) when it
    holds a longer prefix than `slot` itself; None keeps `slot`'s own prefix in place.
    """

    seq: Sequence
    slot: int
    reuse: int
    copy_from: int | None = None


@dataclass(frozen=True)
class Chunk:
    """`seq.tokens[start:start + count]` at positions `start...`, in this step's batch.

    `logits`: the chunk ends the sequence's known tokens, so the next one is sampled.
    """

    seq: Sequence
    start: int
    count: int
    logits: bool
    score: bool = False   # every row's logits: the prompt's tokens are being scored


@dataclass(frozen=True)
class StepPlan:
    """Everything one pass does, in the order `execute` does it."""

    drop: tuple[Sequence, ...] = ()       # cancelled: out of the queue or out of the cache
    admit: tuple[Admission, ...] = ()     # FIFO, into free slots
    evict: tuple[int, ...] = ()           # idle slots whose prefix caches go, LRU first
    preempt: tuple[Sequence, ...] = ()    # running ones sent back to the queue, youngest first
    batch: tuple[Chunk, ...] = ()         # decoding sequences first, then prompt chunks

    @property
    def batch_tokens(self) -> int:
        return sum(c.count for c in self.batch)


@dataclass
class _SlotView:
    """`schedule`'s scratch copy of a slot while it simulates the pass."""

    id: int
    cached: Seq[int]
    busy: bool
    last_used: int
    lender: int | None = None
    shared: int = 0


def schedule(state: SchedulerState) -> StepPlan:
    """Decide one pass: drops, admissions, the batch, evictions and preemptions. Pure."""
    slots = [_SlotView(s.id, s.cached, s.owner is not None, s.last_used, s.lender, s.shared)
             for s in state.slots]
    running = [s for s in state.running if not s.cancelled]
    n_past = {s: s.n_past for s in running}
    slot_of = {s: s.slot for s in running}
    drop = [s for s in state.waiting if s.cancelled]
    for seq in state.running:
        if seq.cancelled:
            drop.append(seq)
            _empty(slots, seq.slot)
            slots[seq.slot].busy = False
            slots[seq.slot].last_used = state.step

    def cells_free() -> int:
        return state.n_ctx - cells_used(slots)

    admit: list[Admission] = []
    waiting = set(state.waiting)
    admitted: set[Sequence] = set()
    for seq in state.waiting:
        if seq.cancelled or seq in admitted:
            continue
        # n > 1 comes in as a group: all of its sequences, or none yet.
        group = [seq, *(f for f in seq.followers if f in waiting and not f.cancelled)]
        free = [s for s in slots if not s.busy]
        if len(free) < len(group):
            break
        evictable = sum(len(s.cached) for s in free)
        # Room for its remaining prompt plus one more token for everyone running.
        need = len(seq.tokens) - seq.n_past + len(running) + len(group)
        if need > cells_free() + evictable:
            break
        for member in group:
            free = [s for s in slots if not s.busy]
            if member is seq:
                placed = _place(seq, free, slots)
            else:  # takes the leader's cells later; keep the richest prefix caches
                placed = Admission(member, min(free, key=lambda s: (len(s.cached),
                                                                     s.last_used)).id, 0)
            target = slots[placed.slot]
            _empty(slots, placed.slot, 0 if placed.copy_from is not None else placed.reuse)
            target.cached, target.busy = member.tokens[:placed.reuse], True
            if placed.copy_from is not None:
                target.lender, target.shared = placed.copy_from, placed.reuse
            target.last_used = state.step
            n_past[member], slot_of[member] = placed.reuse, placed.slot
            running.append(member)
            admit.append(placed)
            admitted.add(member)

    batch = _batch(running, n_past, state.step_tokens)
    evict: list[int] = []
    preempt: list[Sequence] = []
    if running:
        idle = sorted((s for s in slots if not s.busy and s.cached), key=lambda s: s.last_used)
        while True:
            need = sum(c.count for c in batch)
            while need > cells_free() and idle:
                slot = idle.pop(0)
                _empty(slots, slot.id)
                evict.append(slot.id)
            if need <= cells_free() or len(running) <= 1:
                break
            victim = running.pop()
            _empty(slots, slot_of[victim])
            slots[slot_of[victim]].busy = False
            preempt.append(victim)
            batch = _batch(running, n_past, state.step_tokens)
    return StepPlan(drop=tuple(drop), admit=tuple(admit), evict=tuple(evict),
                    preempt=tuple(preempt), batch=tuple(batch))


def _empty(slots: list[_SlotView], slot_id: int, keep: int = 0) -> None:
    """The simulated slot keeps its first `keep` cells (see `cut`)."""
    cut(slots, slot_id, keep)
    slots[slot_id].cached = slots[slot_id].cached[:keep]


def _place(seq: Sequence, free: list[_SlotView], slots: list[_SlotView]) -> Admission:
    """The free slot for `seq` and the longest prefix of its tokens already cached.

    A prompt being scored reuses no position whose row it still needs."""
    limit = len(seq.tokens) - 1  # the last token must be decoded to get logits
    if seq.scoring:
        limit = len(seq.prompt_scores)
    target = max(free, key=lambda s: (common_prefix(s.cached, seq.tokens), -s.last_used))
    own = min(common_prefix(target.cached, seq.tokens), limit)
    donor = max(slots, key=lambda s: common_prefix(s.cached, seq.tokens))
    shared = min(common_prefix(donor.cached, seq.tokens), limit)
    if shared > own and donor is not target:
        return Admission(seq, target.id, shared, copy_from=donor.id)
    return Admission(seq, target.id, own)


def _batch(running: list[Sequence], n_past: dict[Sequence, int], step_tokens: int) -> list[Chunk]:
    """One token for every decoding sequence, then prompt chunks within the budget.

    A prompt chunk stops before the prompt's last token, which is decoded alone in a
    later step (see the module docstring). Sequences waiting for their leader's cells
    are not in the batch."""
    active = [s for s in running if s.leader is None]
    chunks = [Chunk(s, n_past[s], 1, True) for s in active if len(s.tokens) - n_past[s] == 1]
    budget = step_tokens - len(chunks)
    for s in active:
        remaining = len(s.tokens) - n_past[s] - 1
        if remaining > 0 and budget > 0:
            take = min(remaining, budget, SCORE_CHUNK if s.scoring else remaining)
            budget -= take
            chunks.append(Chunk(s, n_past[s], take, False, score=s.scoring))
    return chunks


@dataclass(frozen=True)
class StepReport:
    """One executed pass, for observers; published before any of its tokens is emitted.

    `planned_at` is the step counter when the plan was made (admissions and drops happen
    then); `decoded_at` the step number its batch was decoded as (its logits chunks get
    their next token in that step), None when nothing was decoded. `preempted` adds a
    sequence preempted because llama.cpp found no room for the batch to `plan.preempt`.
    """

    plan: StepPlan
    planned_at: int
    decoded_at: int | None
    preempted: tuple[Sequence, ...]


@dataclass(frozen=True)
class SlotReport:
    """A public view of one slot: who holds it and how many KV cells it keeps."""

    id: int
    busy: bool
    cached_tokens: int


# -- the thread that obeys -----------------------------------------------------------------
class Scheduler:
    """The thread that owns one llama.cpp context and runs continuous batching."""

    def __init__(self, *, llama: ModuleType, ctx: object, n_ctx: int, n_slots: int,
                 step_tokens: int, max_queue: int, piece: Callable[[int], bytes],
                 is_eog: Callable[[int], bool], bos: int = -1, name: str = "model") -> None:
        self._ll = llama
        self._ctx = ctx
        self._mem = llama.llama_get_memory(ctx)
        self.n_ctx = n_ctx
        self.step_tokens = step_tokens
        self.max_queue = max_queue
        self._piece = piece
        self._is_eog = is_eog
        self._bos = bos
        self._slots = [Slot(i) for i in range(n_slots)]
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._mean_request_s = 5.0
        self._batch = llama.llama_batch_init(step_tokens, 0, 1)
        self._observers: tuple[Callable[[StepReport], None], ...] = ()
        self.step = 0
        self._thread = threading.Thread(target=self._run, name=f"strato-sched-{name}",
                                        daemon=True)
        self._thread.start()

    # -- called from other threads -------------------------------------------------
    def submit(self, seq: Sequence, *followers: Sequence) -> None:
        """Queue `seq` (and the other answers of an n > 1 request, which take its
        prompt's cells), or raise QueueFull (with Retry-After) when the queue is full."""
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
            seq.followers = list(followers)
            for follower in followers:
                follower.leader = seq
            self._waiting.extend((seq, *followers))
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
        return cells_used(self._slots)

    def slots(self) -> list[SlotReport]:
        """Who holds each slot and how many cells it keeps (a snapshot)."""
        with self._cv:
            return [SlotReport(s.id, s.owner is not None, len(s.cached)) for s in self._slots]

    def subscribe(self, observer: Callable[[StepReport], None]) -> None:
        """Call `observer` with every pass's `StepReport`, on the scheduler thread."""
        with self._cv:
            self._observers = (*self._observers, observer)

    def unsubscribe(self, observer: Callable[[StepReport], None]) -> None:
        with self._cv:
            self._observers = tuple(o for o in self._observers if o is not observer)

    def state(self) -> SchedulerState:
        """The snapshot `schedule` plans from."""
        with self._cv:
            return SchedulerState(slots=tuple(self._slots), waiting=tuple(self._waiting),
                                  running=tuple(self._running), n_ctx=self.n_ctx,
                                  step_tokens=self.step_tokens, step=self.step)

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
                plan = schedule(self.state())
            try:
                self.execute(plan)
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

    def execute(self, plan: StepPlan) -> None:
        """Carry out `plan` against llama.cpp, then sample and emit. Scheduler thread only."""
        planned_at = self.step
        with self._cv:
            self._drop(plan.drop)
            exact = all([self._admit(a) for a in plan.admit])
        if not exact:
            # llama.cpp could not cut a cached prefix, so the sequence starts from zero:
            # the batch was planned from positions that no longer hold.
            self._publish(StepReport(StepPlan(drop=plan.drop, admit=plan.admit), planned_at,
                                     None, ()))
            self.execute(schedule(self.state()))
            return
        for slot_id in plan.evict:
            self._ll.llama_memory_seq_rm(self._mem, slot_id, -1, -1)
            self._empty(slot_id)
        for seq in plan.preempt:
            self._preempt(seq)
        if not plan.batch:
            self._publish(StepReport(plan, planned_at, None, plan.preempt))
            return
        outputs, scored = self._fill_batch(plan.batch)
        rc = self._ll.llama_decode(self._ctx, self._batch)
        if rc == 1 and len(self._running) > 1:
            victim = self._running[-1]
            self._preempt(victim)  # fragmented cache: retry next step with less
            self._publish(StepReport(plan, planned_at, None, (*plan.preempt, victim)))
            return
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}")
        self.step += 1
        metrics.batch_size.observe(len(plan.batch))
        for chunk in plan.batch:
            seq = chunk.seq
            seq.n_past = chunk.start + chunk.count
            slot = self._slots[seq.slot]
            slot.cached = seq.tokens[:seq.n_past]
            slot.last_used = self.step
        self._publish(StepReport(plan, planned_at, self.step, plan.preempt))
        for seq, start, count, row in scored:
            self._score(seq, start, count, row)
        for seq, idx in outputs:
            group = [seq, *self._fork(seq)]
            for member in group:
                self._sample(member, idx)
        metrics.kv_cells_used.set(self.kv_cells_used())

    def _empty(self, slot_id: int, keep: int = 0) -> None:
        """Bookkeeping for llama.cpp having dropped slot `slot_id`'s cells from `keep`."""
        cut(self._slots, slot_id, keep)
        self._slots[slot_id].cached = self._slots[slot_id].cached[:keep]

    def _fork(self, leader: Sequence) -> list[Sequence]:
        """The leader's prompt is in its cells: its followers take them (seq_cp shares
        the cells) and become sequences of their own, at the same position."""
        forked = []
        for seq in leader.followers:
            if seq.cancelled or seq.slot < 0:
                seq.leader = None  # left the group (cancelled, or preempted and requeued)
                continue
            slot = self._slots[seq.slot]
            self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
            self._ll.llama_memory_seq_cp(self._mem, leader.slot, slot.id, 0, -1)
            self._empty(slot.id)
            slot.cached = seq.tokens[:leader.n_past]
            slot.lender, slot.shared = leader.slot, leader.n_past
            seq.n_past, seq.leader = leader.n_past, None
            forked.append(seq)
        leader.followers = []
        return forked

    def _score(self, seq: Sequence, start: int, count: int, row: int) -> None:
        """Rows `row...` hold the logits after prompt positions `start...`: each scores
        the prompt token that follows it (positions already scored are skipped: a
        preempted prompt is read again from a scored prefix)."""
        top = seq.request.logprobs or 0
        for k in range(count):
            nxt = start + k + 1
            if nxt != len(seq.prompt_scores) + 1 or nxt >= len(seq.prompt):
                continue
            logprob, alts = log_softmax_at(seq.sampler.logits(self._ctx, row + k),
                                           seq.prompt[nxt], top)
            seq.prompt_scores.append(describe(self._piece, seq.prompt[nxt], logprob, alts))

    def _prompt_logprobs(self, seq: Sequence) -> tuple[TokenLogprob, ...]:
        """The prompt's tokens with their logprobs, once per request (on answer 0's
        first event): a leading BOS is left out, a first token without one has None."""
        if not seq.request.prompt_logprobs or seq.prompt_reported or seq.index != 0:
            return ()
        seq.prompt_reported = True
        head = [] if seq.prompt[0] == self._bos else [
            describe(self._piece, seq.prompt[0], None, [])]
        return tuple(head + seq.prompt_scores)

    def _sample(self, seq: Sequence, idx: int) -> None:
        """Draw `seq`'s next token from logits row `idx` (or end it: max_tokens 0)."""
        if seq.generated >= seq.request.max_tokens:  # only scoring was asked for
            self._finish(seq, "", "length", time.monotonic())
            return
        prompt = self._prompt_logprobs(seq)
        if prompt:  # the prompt's scores go out before its first token
            seq.emit(TokenEvent(text="", index=seq.index, prompt_logprobs=prompt))
        token = seq.sampler.sample(self._ctx, idx)
        if seq.request.logprobs is not None:
            logprob, alts = log_softmax_at(seq.sampler.logits(self._ctx, idx), token,
                                           seq.request.logprobs)
            seq.logprobs.append(describe(self._piece, token, logprob, alts))
        self._advance(seq, token)

    def _publish(self, report: StepReport) -> None:
        for observer in self._observers:
            observer(report)

    def _drop(self, cancelled: Seq[Sequence]) -> None:
        """Cancelled sequences: waiting ones leave the queue, running ones their cells."""
        if not cancelled:
            return
        gone = set(cancelled)
        if any(s in gone for s in self._waiting):
            self._waiting = deque(s for s in self._waiting if s not in gone)
            metrics.queue_depth.set(len(self._waiting))
        for seq in [s for s in self._running if s in gone]:
            self._release(seq, keep_cache=False)

    def _admit(self, admission: Admission) -> bool:
        """Give the queue's head its slot and cached prefix; False if llama.cpp kept less
        of the prefix than planned."""
        seq = self._waiting.popleft()
        assert seq is admission.seq, "admissions follow the queue's order"
        metrics.queue_depth.set(len(self._waiting))
        target = self._slots[admission.slot]
        reused = admission.reuse
        if admission.copy_from is not None:
            self._ll.llama_memory_seq_rm(self._mem, target.id, -1, -1)
            self._ll.llama_memory_seq_cp(self._mem, admission.copy_from, target.id, 0, reused)
            self._empty(target.id)
            target.lender, target.shared = admission.copy_from, reused
        elif not self._ll.llama_memory_seq_rm(self._mem, target.id, reused, -1):
            self._ll.llama_memory_seq_rm(self._mem, target.id, -1, -1)
            reused = 0
        self._empty(target.id, reused)
        target.cached = seq.tokens[:reused]
        target.owner = seq
        target.last_used = self.step
        seq.slot, seq.n_past = target.id, reused
        if not seq.admitted:
            metrics.tokens_in_total.inc(len(seq.prompt))
            seq.reused_tokens = reused
            seq.admitted = True
        if reused:
            metrics.prefix_cache_hits_total.inc(reused)
        self._running.append(seq)
        return reused == admission.reuse

    def _release(self, seq: Sequence, *, keep_cache: bool) -> None:
        slot = self._slots[seq.slot]
        if not keep_cache:
            self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
            self._empty(slot.id)
        slot.owner = None
        slot.last_used = self.step
        self._running.remove(seq)
        seq.done = True
        seq.sampler.free()

    def _preempt(self, seq: Sequence) -> None:
        """Out of KV cells: drop `seq`'s cells and requeue it first, tokens kept."""
        slot = self._slots[seq.slot]
        self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
        self._empty(slot.id)
        slot.owner = None
        self._running.remove(seq)
        seq.n_past, seq.slot = 0, -1
        if seq.leader is not None:  # it reads the prompt itself when it comes back
            seq.leader.followers.remove(seq)
            seq.leader = None
        with self._cv:
            self._waiting.appendleft(seq)
            metrics.queue_depth.set(len(self._waiting))
        log.warning("KV cache full: preempted a sequence of %d tokens", len(seq.tokens))

    def _fill_batch(self, chunks: Seq[Chunk]) -> tuple[list[tuple[Sequence, int]],
                                                       list[tuple[Sequence, int, int, int]]]:
        """Write `chunks` into the llama_batch. Returns (sequence, logits row) to sample
        and (sequence, start, count, first row) of prompt chunks to score."""
        batch = self._batch
        outputs: list[tuple[Sequence, int]] = []
        scored: list[tuple[Sequence, int, int, int]] = []
        n = 0
        for chunk in chunks:
            seq = chunk.seq
            if chunk.score:
                scored.append((seq, chunk.start, chunk.count, n))
            for k in range(chunk.count):
                batch.token[n] = seq.tokens[chunk.start + k]
                batch.pos[n] = chunk.start + k
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.slot
                batch.logits[n] = 1 if chunk.score or (chunk.logits and k == chunk.count - 1) \
                    else 0
                n += 1
            if chunk.logits:
                outputs.append((seq, n - 1))
        batch.n_tokens = n
        return outputs, scored

    def _advance(self, seq: Sequence, token: int) -> None:
        """Record one sampled token and push what the client may see of it."""
        now = time.monotonic()
        if seq.last_token_at is None:
            metrics.ttft_seconds.observe(now - seq.submitted_at)
        else:
            metrics.inter_token_seconds.observe(now - seq.last_token_at)
        seq.last_token_at = now
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
            if text:  # a token's logprob goes out with the text it made
                seq.emit(TokenEvent(text=text, index=seq.index, logprobs=self._taken(seq)))
            return
        self._finish(seq, text, finish, now)

    def _finish(self, seq: Sequence, text: str, finish: FinishReason, now: float) -> None:
        self._release(seq, keep_cache=True)
        self._mean_request_s = 0.8 * self._mean_request_s + 0.2 * (now - seq.submitted_at)
        seq.emit(TokenEvent(text=text, finish_reason=finish, prompt_tokens=len(seq.prompt),
                            completion_tokens=seq.generated, index=seq.index,
                            logprobs=self._taken(seq),
                            prompt_logprobs=self._prompt_logprobs(seq)))

    @staticmethod
    def _taken(seq: Sequence) -> tuple[TokenLogprob, ...]:
        """The logprobs not yet sent, handed over (each goes out once)."""
        taken, seq.logprobs = tuple(seq.logprobs), []
        return taken
