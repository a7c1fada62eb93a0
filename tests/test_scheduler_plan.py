"""`schedule`, the scheduler's pure half, without a model: admission, the token budget,
prefix reuse, eviction of idle prefix caches and preemption, on plain token lists."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from core.engine.protocol import GenerationRequest
from core.engine.scheduler import (
    Admission,
    Chunk,
    SchedulerState,
    Sequence,
    Slot,
    StepPlan,
    schedule,
)


def seq(tokens: list[int], *, n_past: int = 0, slot: int = -1) -> Sequence:
    """A sequence as the scheduler holds it; the plan never samples, so no sampler."""
    s = Sequence(request=GenerationRequest(prompt="", max_tokens=16), prompt=list(tokens),
                 sampler=None, emit=lambda _: None)  # type: ignore[arg-type]
    s.n_past, s.slot = n_past, slot
    return s


def running(tokens: list[int], slot: Slot) -> Sequence:
    """A decoding sequence in `slot`: all but its last token are in the cache."""
    s = seq(tokens, n_past=len(tokens) - 1, slot=slot.id)
    slot.owner, slot.cached = s, tokens[:-1]
    return s


def state(slots: list[Slot], waiting: Iterable[Sequence] = (), run: Iterable[Sequence] = (), *,
          n_ctx: int = 1000, step_tokens: int = 64, step: int = 10) -> SchedulerState:
    return SchedulerState(slots=tuple(slots), waiting=tuple(waiting), running=tuple(run),
                          n_ctx=n_ctx, step_tokens=step_tokens, step=step)


def test_nothing_to_do_is_an_empty_plan() -> None:
    assert schedule(state([Slot(0), Slot(1)])) == StepPlan()


def test_admission_is_fifo_into_free_slots() -> None:
    a, b, c = seq([1, 2, 3]), seq([4, 5]), seq([6])
    plan = schedule(state([Slot(0), Slot(1)], [a, b, c]))
    assert plan.admit == (Admission(a, 0, 0), Admission(b, 1, 0))  # c waits: no slot
    assert plan.batch == (Chunk(a, 0, 2, False), Chunk(b, 0, 1, False))


def test_admission_waits_for_room_and_never_skips_the_head() -> None:
    # 10 cells: the running sequence holds 6; the head needs 4 + (1 running + 1) = 6.
    slots = [Slot(0), Slot(1), Slot(2)]
    r = running(list(range(100, 107)), slots[0])
    head, small = seq([1, 2, 3, 4]), seq([9])
    plan = schedule(state(slots, [head, small], [r], n_ctx=10))
    assert plan.admit == ()  # `small` would fit, but the queue is FIFO
    assert plan.batch == (Chunk(r, 6, 1, True),)
    plan = schedule(state(slots, [head, small], [r], n_ctx=11))
    assert plan.admit == ()  # one cell short
    # Admission reserves the remaining prompt plus a token for everyone running; the
    # head's prompt is not in the cache yet, so `small` (1 + 2 running + 1) fits too.
    plan = schedule(state(slots, [head, small], [r], n_ctx=12))
    assert plan.admit == (Admission(head, 1, 0), Admission(small, 2, 0))


def test_idle_prefix_caches_count_as_room_for_admission() -> None:
    slots = [Slot(0, cached=list(range(50, 58)), last_used=3), Slot(1)]
    head = seq([1, 2, 3, 4])
    plan = schedule(state(slots, [head], n_ctx=10))
    # Neither slot holds a prefix of the head: it takes the least recently used one,
    # and slot 0's idle cache is evicted to make room for its prompt.
    assert plan.admit == (Admission(head, 1, 0),)
    assert plan.evict == (0,)
    assert plan.batch == (Chunk(head, 0, 3, False),)


def test_decoders_come_first_and_prompts_share_the_rest_of_the_budget() -> None:
    slots = [Slot(i) for i in range(4)]
    decoders = [running([10 + i, 20 + i, 30 + i], slots[i]) for i in range(2)]
    long_prompt, short_prompt = seq(list(range(1000, 1100))), seq([7, 8, 9])
    plan = schedule(state(slots, [long_prompt, short_prompt], decoders, step_tokens=32))
    assert plan.batch == (Chunk(decoders[0], 2, 1, True), Chunk(decoders[1], 2, 1, True),
                          Chunk(long_prompt, 0, 30, False))  # no budget left for the short one
    assert plan.batch_tokens == 32


def test_a_long_prompt_resumes_where_the_last_step_stopped() -> None:
    slots = [Slot(0), Slot(1)]
    prompt = list(range(1000, 1100))
    s = seq(prompt, n_past=60, slot=0)
    slots[0].owner, slots[0].cached = s, prompt[:60]
    plan = schedule(state(slots, run=[s], step_tokens=32))
    assert plan.batch == (Chunk(s, 60, 32, False),)
    s.n_past, slots[0].cached = 92, prompt[:92]
    assert schedule(state(slots, run=[s], step_tokens=32)).batch == (Chunk(s, 92, 7, False),)


def test_own_cached_prefix_is_reused_in_place() -> None:
    slots = [Slot(0, cached=[1, 2, 3, 4, 99], last_used=2), Slot(1, last_used=1)]
    s = seq([1, 2, 3, 4, 5, 6])
    plan = schedule(state(slots, [s]))
    assert plan.admit == (Admission(s, 0, 4),)
    assert plan.batch == (Chunk(s, 4, 1, False),)


def test_a_fully_cached_prompt_still_decodes_its_last_token() -> None:
    slots = [Slot(0, cached=[1, 2, 3])]
    s = seq([1, 2, 3])
    plan = schedule(state(slots, [s]))
    assert plan.admit == (Admission(s, 0, 2),)
    assert plan.batch == (Chunk(s, 2, 1, True),)


def test_a_longer_prefix_in_a_busy_slot_is_copied() -> None:
    slots = [Slot(0), Slot(1, cached=[1, 2])]
    r = running([1, 2, 3, 4, 5, 6], slots[0])
    s = seq([1, 2, 3, 4, 7])
    plan = schedule(state(slots, [s], [r]))
    assert plan.admit == (Admission(s, 1, 4, copy_from=0),)
    assert plan.batch == (Chunk(r, 5, 1, True), Chunk(s, 4, 1, True))


def test_without_a_prefix_the_least_recently_used_free_slot_is_taken() -> None:
    slots = [Slot(0, last_used=7), Slot(1, last_used=2), Slot(2, last_used=5)]
    s = seq([1, 2])
    assert schedule(state(slots, [s])).admit == (Admission(s, 1, 0),)


def test_idle_caches_are_evicted_lru_first_and_only_as_needed() -> None:
    slots = [Slot(0), Slot(1, cached=[50] * 4, last_used=5),
             Slot(2, cached=[60] * 4, last_used=1), Slot(3, cached=[70] * 4, last_used=3)]
    r = seq(list(range(8)), slot=0)  # admitted, prompt not read yet
    slots[0].owner = r
    plan = schedule(state(slots, run=[r], n_ctx=14))
    # 12 cells cached, 7 needed of 14 (the prompt but its last token, which is decoded
    # alone in the next step): two idle caches go, oldest first.
    assert plan.evict == (2, 3)
    assert plan.preempt == ()
    assert plan.batch == (Chunk(r, 0, 7, False),)


def test_running_sequences_outgrowing_the_cache_preempt_the_youngest() -> None:
    slots = [Slot(i) for i in range(3)]
    seqs = [running(list(range(10 * i, 10 * i + 5)), slots[i]) for i in range(3)]
    # 12 cells held, 3 more needed for the next tokens, 14 in all: one must go.
    plan = schedule(state(slots, run=seqs, n_ctx=14))
    assert plan.preempt == (seqs[2],)
    assert plan.batch == (Chunk(seqs[0], 4, 1, True), Chunk(seqs[1], 4, 1, True))


def test_the_last_running_sequence_is_never_preempted() -> None:
    slots = [Slot(0)]
    r = running(list(range(20)), slots[0])
    plan = schedule(state(slots, run=[r], n_ctx=10))
    assert plan.preempt == ()
    assert plan.batch == (Chunk(r, 19, 1, True),)


def test_cancelled_sequences_are_dropped_and_free_their_slot_in_the_same_pass() -> None:
    slots = [Slot(0)]
    gone = running([1, 2, 3, 4], slots[0])
    gone.cancelled = True
    waiting_gone, nxt = seq([5]), seq([1, 2, 3, 9])
    waiting_gone.cancelled = True
    plan = schedule(state(slots, [waiting_gone, nxt], [gone]))
    assert plan.drop == (waiting_gone, gone)
    # Its cells are dropped, so none of its prefix is offered to the next sequence.
    assert plan.admit == (Admission(nxt, 0, 0),)
    assert plan.batch == (Chunk(nxt, 0, 3, False),)


def test_schedule_changes_nothing_it_reads() -> None:
    slots = [Slot(0), Slot(1, cached=[1, 2], last_used=4), Slot(2, cached=[9] * 6)]
    r = running(list(range(30, 36)), slots[0])
    w = seq([1, 2, 3])
    before = copy.deepcopy((slots, r.n_past, r.slot, r.tokens, w.n_past, w.slot))
    schedule(state(slots, [w], [r], n_ctx=12))
    after = (slots, r.n_past, r.slot, r.tokens, w.n_past, w.slot)
    assert [(s.id, s.cached, s.last_used, s.owner is None) for s in after[0]] == \
        [(s.id, s.cached, s.last_used, s.owner is None) for s in before[0]]
    assert after[1:] == before[1:]
