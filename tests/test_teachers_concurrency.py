"""The in-flight limit's decisions (mentor/teachers/concurrency.py): simulated servers that queue,
that work in parallel, that say they are overloaded; the bounds it never leaves; the slots that
enforce it for asyncio tasks."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mentor.teachers.concurrency import AdaptiveLimit, FixedLimit, SentRequest, Slots


def simulate(
    limiter,
    prompts: int,
    service: float,
    overhead: float,
    capacity: int = 1,
    jitter: float = 0.2,
    prefill: float = 0.1,
    seed: int = 0,
) -> dict:
    """A client sending as many requests as `limiter` allows to a server that answers `capacity`
    at a time in arrival order (more wait their turn), each in `service` seconds (+- `jitter`),
    its first token after `prefill` of that, `overhead` seconds spent outside the server's queue
    (network, parsing). Returns the limits after each answer, the in-flight counts and the wall time."""
    rng = random.Random(seed)
    now, free, in_flight, sent = 0.0, [0.0] * capacity, [], 0
    limits, counts = [], []
    while sent < prompts or in_flight:
        while sent < prompts and len(in_flight) < limiter.limit:
            ticket = SentRequest(now, len(in_flight) + 1, limiter.round)
            took = service * (1 + rng.uniform(-jitter, jitter))
            worker = min(range(capacity), key=free.__getitem__)
            start = max(now + overhead / 2, free[worker])
            free[worker] = start + took
            in_flight.append((free[worker] + overhead / 2, start + prefill * took + overhead / 2, ticket))
            sent += 1
        counts.append(len(in_flight))
        in_flight.sort(key=lambda r: r[0])
        done, first, ticket = in_flight.pop(0)
        now = done
        limiter.on_answer(ticket, done - ticket.sent, first - ticket.sent)
        limits.append(limiter.limit)
    return {"limits": limits, "in_flight": counts, "wall": now}


@settings(max_examples=60, deadline=None)
@given(
    service=st.floats(0.2, 60),
    overhead_share=st.floats(0, 0.2),
    maximum=st.integers(2, 32),
    jitter=st.floats(0, 0.3),
    seed=st.integers(0, 1000),
)
def test_a_server_that_answers_one_at_a_time_gets_two(service, overhead_share, maximum, jitter, seed):
    """One request answered, one waiting: the server never idles, and little else waits (a third
    now and then, when requests spend a good part of their time outside the server's queue)."""
    run = simulate(AdaptiveLimit(maximum), 40, service, service * overhead_share, jitter=jitter, seed=seed)
    assert run["limits"][0] == 2  # one answer is enough to see the server has room for one more
    settled = run["limits"][2:]
    assert set(settled) <= {2, 3} and settled.count(2) >= 0.8 * len(settled)
    assert max(run["in_flight"]) <= 3
    # one waiting is all it takes: the server is busy all the time
    assert run["wall"] <= 40 * service * (1 + jitter) + 2 * service * overhead_share + 2 * service


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(2, 6), service=st.floats(0.5, 30), seed=st.integers(0, 1000))
def test_a_server_with_some_capacity_gets_about_that_many(capacity, service, seed):
    run = simulate(AdaptiveLimit(32), 30 * capacity, service, 0.02 * service, capacity=capacity, seed=seed)
    settled = run["limits"][len(run["limits"]) // 2 : -capacity - 2]  # past the ramp, before the last few
    assert capacity <= sum(settled) / len(settled) <= capacity + 2.5
    assert max(run["limits"]) <= 2 * capacity + 2


@pytest.mark.parametrize("maximum", [3, 8, 16])
def test_a_server_that_does_not_queue_gets_the_maximum(maximum):
    run = simulate(AdaptiveLimit(maximum), 40 * maximum, 2.0, 0.1, capacity=1000)
    assert run["limits"][-maximum * 2 :].count(maximum) == maximum * 2
    assert max(run["in_flight"]) == maximum


def test_growth_needs_every_slot_used():
    """Answers to requests sent while slots stood empty say nothing about the server's room."""
    limit = AdaptiveLimit(8, initial=4)
    for _ in range(10):
        limit.on_answer(SentRequest(0.0, 2, 0), latency=1.0, first_token=0.1)
    assert limit.limit == 4
    limit.on_answer(SentRequest(0.0, 4, 0), latency=1.0, first_token=0.1)
    assert limit.value > 4


def test_overload_halves_the_limit_once_per_round():
    limit = AdaptiveLimit(16, initial=8)
    before = [SentRequest(0.0, 8, limit.round) for _ in range(8)]  # all in flight when the server says stop
    limit.on_overload(before[0])
    assert limit.limit == 4
    for ticket in before[1:]:  # the same congestion, heard again: no further cut
        limit.on_overload(ticket)
    assert limit.limit == 4
    limit.on_overload(SentRequest(1.0, 4, limit.round))  # sent after the cut, still too many: cut again
    assert limit.limit == 2
    for _ in range(5):
        limit.on_overload(SentRequest(2.0, 1, limit.round))
    assert limit.limit == 1


def test_queueing_pulls_the_limit_down():
    """At 8 in flight on a server that takes them one at a time, each answer waited for the seven
    before it: the limit falls to 2."""
    limit = AdaptiveLimit(8, initial=8)
    limit.on_answer(SentRequest(0.0, 1, 0), latency=1.0, first_token=0.1)  # the no-load time to first token
    seen = []
    for _ in range(12):
        limit.on_answer(SentRequest(0.0, limit.limit, 0), latency=limit.limit * 1.0, first_token=(limit.limit - 1) + 0.1)
        seen.append(limit.limit)
    assert seen == sorted(seen, reverse=True) and seen[-1] == 2


def test_small_waits_are_noise():
    """A fast server's few milliseconds of jitter do not read as a queue."""
    limit = AdaptiveLimit(4)
    rng = random.Random(1)
    for _ in range(12):
        first = 0.002 + rng.uniform(0, 0.01)
        limit.on_answer(SentRequest(0.0, limit.limit, 0), latency=first + 0.001, first_token=first)
    assert limit.limit == 4


events = st.lists(
    st.one_of(
        st.tuples(st.just("answer"), st.floats(0, 1e4), st.floats(0, 1e4) | st.none(), st.integers(0, 40)),
        st.tuples(st.just("overload"), st.integers(0, 40), st.integers(-2, 2)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(maximum=st.integers(1, 32), initial=st.integers(-3, 40), events=events)
def test_the_limit_stays_between_one_and_the_maximum(maximum, initial, events):
    limit = AdaptiveLimit(maximum, initial=initial)
    for event in events:
        if event[0] == "answer":
            _, latency, first, in_flight = event
            limit.on_answer(SentRequest(0.0, in_flight, limit.round), latency, first)
        else:
            _, in_flight, lag = event
            limit.on_overload(SentRequest(0.0, in_flight, max(0, limit.round + lag)))
        assert 1 <= limit.limit <= maximum
        assert 1.0 <= limit.value <= maximum


def test_a_fixed_limit_does_not_move():
    limit = FixedLimit(8)
    limit.on_overload(SentRequest(0.0, 8, 0))
    limit.on_answer(SentRequest(0.0, 8, 0), latency=100.0, first_token=99.0)
    assert limit.limit == 8
    with pytest.raises(ValueError):
        FixedLimit(0)


def test_slots_follow_a_changing_limit():
    """A task takes a slot only while fewer than the limit are taken, as the limit falls and rises
    with tasks waiting."""
    limit = AdaptiveLimit(6, initial=4)
    slots = Slots(limit)
    entries = []  # (slots taken, limit) as each task got its slot

    async def task(i: int) -> None:
        async with slots.hold():
            entries.append((slots.in_flight, limit.limit))
            await asyncio.sleep(0.001 * (i % 3))
            if i == 5:
                limit.on_overload(slots.ticket())  # 4 -> 2 while others hold slots and wait for one
            if i == 20:
                limit.value = 6.0

    async def main() -> None:
        await asyncio.gather(*(task(i) for i in range(40)))

    asyncio.run(main())
    assert len(entries) == 40 and slots.in_flight == 0
    assert all(taken <= allowed for taken, allowed in entries)
    assert {allowed for _, allowed in entries} == {4, 2, 6}
    assert max(taken for taken, _ in entries) == 6  # a raised limit lets the waiting tasks in at once


def test_a_freed_slot_wakes_only_the_waiters_that_may_go():
    """A run queues one task per prompt; waking them all on every answer made a run of n prompts
    cost n² checks (16,000 prompts: 109 s of event-loop time before any server time)."""

    class Counting(FixedLimit):
        checks = 0

        @property
        def limit(self) -> int:
            Counting.checks += 1
            return self.maximum

    slots = Slots(Counting(4))

    async def task() -> None:
        async with slots.hold():
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(task() for _ in range(2000)))

    asyncio.run(main())
    assert slots.in_flight == 0
    assert Counting.checks < 10 * 2000  # waking every waiter each time: about 2000² / 2 / 4
