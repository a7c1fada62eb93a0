"""The scheduler's n > 1 groups, its prompt scoring and its deterministic first token:
the pure plan on token lists, then the real model (prompt read once for n answers, KV
cells shared and counted once)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from core.config import Settings
from core.engine.llama import LlamaEngine
from core.engine.protocol import GenerationRequest, SamplingParams
from core.engine.scheduler import (
    SCORE_CHUNK,
    Admission,
    Chunk,
    SchedulerState,
    Sequence,
    Slot,
    cells_used,
    cut,
    schedule,
)
from tests.step_recorder import StepRecorder


def seq(tokens: list[int], **request: object) -> Sequence:
    """A sequence as the scheduler holds it; the plan never samples, so no sampler."""
    req = GenerationRequest(prompt="", max_tokens=16, **request)  # type: ignore[arg-type]
    return Sequence(request=req, prompt=list(tokens), sampler=None,  # type: ignore[arg-type]
                    emit=lambda _: None)


def group(tokens: list[int], n: int) -> list[Sequence]:
    """An n > 1 request as `Scheduler.submit` links it: a leader and its followers."""
    members = [seq(tokens, n=n) for _ in range(n)]
    members[0].followers = members[1:]
    for i, follower in enumerate(members[1:], 1):
        follower.leader, follower.index = members[0], i
    return members


def state(slots: list[Slot], waiting: Iterable[Sequence] = (), run: Iterable[Sequence] = (),
          *, n_ctx: int = 1000, step_tokens: int = 64) -> SchedulerState:
    return SchedulerState(slots=tuple(slots), waiting=tuple(waiting), running=tuple(run),
                          n_ctx=n_ctx, step_tokens=step_tokens, step=5)


def test_a_prompts_last_token_is_decoded_alone() -> None:
    a = seq([1, 2, 3, 4])
    plan = schedule(state([Slot(0)], [a]))
    assert plan.batch == (Chunk(a, 0, 3, False),)
    a.slot, a.n_past = 0, 3
    plan = schedule(state([Slot(0, cached=[1, 2, 3], owner=a)], run=[a]))
    assert plan.batch == (Chunk(a, 3, 1, True),)
    # A one-token prompt has nothing to read first.
    b = seq([9])
    assert schedule(state([Slot(0)], [b])).batch == (Chunk(b, 0, 1, True),)


def test_a_prefix_cache_hit_decodes_the_same_last_token_step() -> None:
    # After a cache hit only the last token is left: the step that samples the first
    # token is the same one-token chunk as when the prompt was read just now.
    a = seq([1, 2, 3, 4])
    plan = schedule(state([Slot(0, cached=[1, 2, 3, 4, 50, 51])], [a]))
    assert plan.admit == (Admission(a, 0, 3),)
    assert plan.batch == (Chunk(a, 3, 1, True),)


def test_a_group_waits_for_n_free_slots_then_enters_together() -> None:
    busy = seq([7, 7])
    busy.slot, busy.n_past = 0, 1
    slots = [Slot(0, cached=[7], owner=busy), Slot(1), Slot(2)]
    members = group([1, 2, 3], 3)
    later = seq([4])
    plan = schedule(state(slots, [*members, later], [busy]))
    assert plan.admit == ()  # two free slots, three answers: wait, and keep FIFO
    slots.append(Slot(3))
    plan = schedule(state(slots, [*members, later], [busy]))
    assert [a.seq for a in plan.admit] == members
    assert all(a.reuse == 0 for a in plan.admit)
    # Only the leader reads the prompt; the followers wait for its cells.
    assert plan.batch == (Chunk(busy, 1, 1, True), Chunk(members[0], 0, 2, False))


def test_followers_take_empty_slots_and_keep_prefix_caches() -> None:
    slots = [Slot(0, cached=[1, 2, 3, 9], last_used=1), Slot(1, cached=[5, 5, 5], last_used=2),
             Slot(2)]
    members = group([1, 2, 3], 2)
    plan = schedule(state(slots, members))
    assert plan.admit[0] == Admission(members[0], 0, 2)  # its own prefix, in place
    assert plan.admit[1].slot == 2  # the empty slot, not slot 1's cache


def test_prompt_scoring_reads_every_row_in_bounded_chunks() -> None:
    long = seq(list(range(100, 200)), prompt_logprobs=True, logprobs=1)
    plan = schedule(state([Slot(0, cached=list(range(100, 150)))], [long], step_tokens=512))
    assert plan.admit == (Admission(long, 0, 0),)  # no reuse: the rows are needed
    assert plan.batch == (Chunk(long, 0, SCORE_CHUNK, False, score=True),)
    # Scored positions may be reused after a preemption; the rest are read again.
    long.prompt_scores = [None] * 40  # type: ignore[list-item]
    plan = schedule(state([Slot(0, cached=list(range(100, 150)))], [long], step_tokens=512))
    assert plan.admit == (Admission(long, 0, 40),)
    assert plan.batch == (Chunk(long, 40, SCORE_CHUNK, False, score=True),)
    long.prompt_scores = [None] * 99  # type: ignore[list-item]
    assert not long.scoring


def test_shared_cells_are_counted_once_while_the_lender_keeps_them() -> None:
    slots = [Slot(0, cached=[1, 2, 3, 4]), Slot(1, cached=[1, 2, 3, 4, 8], lender=0, shared=4),
             Slot(2, cached=[1, 2, 3, 4, 9], lender=0, shared=4)]
    assert cells_used(slots) == 6
    cut(slots, 0, 2)  # the lender keeps two cells: the borrowers own theirs now
    slots[0].cached = slots[0].cached[:2]
    assert cells_used(slots) == 12 and slots[1].lender is None


@pytest.fixture(scope="module")
def engine_settings() -> Settings:
    """Four slots: room for one n=3 request (conftest's `engine`)."""
    return Settings(threads=1, ctx=1024, parallel=4)


def test_n_answers_read_the_prompt_once_and_share_its_cells(engine: LlamaEngine) -> None:
    prompt = "Once upon a time, in a small village by the sea, there lived"
    request = GenerationRequest(prompt=prompt, max_tokens=6, n=3,
                                sampling=SamplingParams(temperature=1.0, seed=3))

    async def run() -> list:
        stream = engine.submit(request)
        with StepRecorder(engine.scheduler) as recorder:
            events = [e async for e in stream]
        return [stream.seqs, events, recorder.reports]

    seqs, events, reports = asyncio.run(run())
    n_prompt = len(seqs[0].prompt)
    decoded = [c for r in reports if r.decoded_at is not None for c in r.plan.batch]
    prompt_chunks = [c for c in decoded if c.start < n_prompt]
    assert sum(c.count for c in prompt_chunks) == n_prompt  # read once, for three answers
    assert {c.seq for c in prompt_chunks} == {seqs[0]}
    finals = [e for e in events if e.finish_reason]
    assert sorted(e.index for e in finals) == [0, 1, 2]
    assert all(e.completion_tokens == 6 for e in finals)
    texts = ["".join(e.text for e in events if e.index == i) for i in range(3)]
    assert len(set(texts)) > 1  # seeds 3, 4, 5
    slots = {s.id: s for s in engine.scheduler.slots()}
    assert all(slots[s.slot].cached_tokens == n_prompt + 5 for s in seqs)
    # Counted once: the prompt, plus each answer's own five decoded tokens.
    assert engine.scheduler.kv_cells_used() == n_prompt + 3 * 5


def test_n_above_the_free_slots_waits_for_them(engine: LlamaEngine) -> None:
    # Four slots: one busy answer leaves three, so a request for four answers waits
    # for it to end, then all four enter in one pass.
    async def run() -> tuple[list[Sequence], Sequence, list]:
        with StepRecorder(engine.scheduler) as recorder:
            busy = engine.submit(GenerationRequest(prompt="1, 2, 3,", max_tokens=32,
                                                   sampling=SamplingParams(temperature=0)))
            first = await busy.__anext__()  # running: it holds its slot
            assert first.finish_reason is None
            many = engine.submit(GenerationRequest(prompt="a, b, c,", max_tokens=2, n=4,
                                                   sampling=SamplingParams(temperature=0)))
            rest = [e async for e in busy]
            assert rest[-1].finish_reason == "length"
            finals = [e async for e in many if e.finish_reason]
        assert sorted(e.index for e in finals) == [0, 1, 2, 3]
        return many.seqs, busy.seq, recorder.reports

    seqs, busy, reports = asyncio.run(run())
    entered = [r.planned_at for r in reports for a in r.plan.admit if a.seq in seqs]
    assert len(entered) == 4 and len(set(entered)) == 1  # together, in one pass
    last_busy_step = max(r.decoded_at for r in reports
                         if r.decoded_at is not None and any(c.seq is busy
                                                             for c in r.plan.batch))
    assert entered[0] >= last_busy_step  # not before the busy answer gave its slot back
