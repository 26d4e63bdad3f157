"""The FIFO admission gate: limit, order, bounded queue, wait timeout, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from textgen.serving.admission import AdmissionGate
from textgen.serving.errors import Overloaded, QueueTimedOut


def run(coro):
    return asyncio.run(coro)


def test_at_most_limit_run_and_waiters_are_served_in_arrival_order():
    async def scenario():
        gate = AdmissionGate(limit=2, max_queue=10, timeout_s=5)
        order: list[int] = []
        peak = 0
        release = asyncio.Event()

        async def worker(i: int):
            nonlocal peak
            async with gate.slot():
                order.append(i)
                peak = max(peak, gate.running)
                await (release.wait() if i < 2 else asyncio.sleep(0.01))

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(worker(i)))
            await asyncio.sleep(0.001)
        assert (gate.running, gate.waiting) == (2, 4)
        release.set()
        await asyncio.gather(*tasks)
        return order, peak, gate.running, gate.waiting

    order, peak, running, waiting = run(scenario())
    assert order == [0, 1, 2, 3, 4, 5]
    assert peak == 2
    assert (running, waiting) == (0, 0)


async def occupy(gate: AdmissionGate, holders: int) -> tuple[asyncio.Event, list[asyncio.Task]]:
    """Start `holders` tasks that take (or wait for) a slot and keep it until the event is set."""
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.slot():
            await release.wait()

    tasks = [asyncio.create_task(holder()) for _ in range(holders)]
    await asyncio.sleep(0.01)
    return release, tasks


async def enter_and_leave(gate: AdmissionGate) -> None:
    async with gate.slot():
        pass


def test_full_queue_is_refused_at_once():
    async def scenario():
        gate = AdmissionGate(limit=1, max_queue=1, timeout_s=5)
        release, tasks = await occupy(gate, 2)  # one runs, one waits
        with pytest.raises(Overloaded):
            await enter_and_leave(gate)
        release.set()
        await asyncio.gather(*tasks)

    run(scenario())


def test_wait_times_out_and_a_timed_out_waiter_does_not_keep_a_slot():
    async def scenario():
        gate = AdmissionGate(limit=1, max_queue=5, timeout_s=0.05)
        release, tasks = await occupy(gate, 1)
        with pytest.raises(QueueTimedOut):
            await enter_and_leave(gate)
        release.set()
        await asyncio.gather(*tasks)
        async with gate.slot():  # the slot is free again
            assert gate.running == 1
        return gate.running, gate.waiting

    assert run(scenario()) == (0, 0)


def test_a_cancelled_waiter_leaves_the_queue():
    async def scenario():
        gate = AdmissionGate(limit=1, max_queue=5, timeout_s=5)
        release, tasks = await occupy(gate, 1)
        waiting = asyncio.create_task(enter_and_leave(gate))
        await asyncio.sleep(0.01)
        assert gate.waiting == 1
        waiting.cancel()
        await asyncio.sleep(0.01)
        assert gate.waiting == 0
        release.set()
        await asyncio.gather(*tasks)
        return gate.running

    assert run(scenario()) == 0


def test_retry_after_estimates_when_the_queue_ahead_will_have_drained():
    async def scenario():
        gate = AdmissionGate(limit=5, max_queue=64, timeout_s=5)
        assert gate.retry_after_s() == 1  # nothing measured yet
        async with gate.slot():
            await asyncio.sleep(0.3)
        assert gate.retry_after_s() == 1  # an empty queue drains at once
        hold = asyncio.Event()

        async def occupant():
            async with gate.slot():
                await hold.wait()

        held = [asyncio.create_task(occupant()) for _ in range(5 + 40)]  # 5 running, 40 waiting
        await asyncio.sleep(0.05)
        estimate = gate.retry_after_s()
        hold.set()
        await asyncio.gather(*held)
        return estimate

    # 41 requests ahead of a newcomer (40 waiting and itself), 0.3 s each (a little more on a busy machine),
    # 5 at a time: 2.5 s, rounded up
    assert run(scenario()) in (3, 4)


def test_a_request_for_several_slots_takes_them_together_and_in_turn():
    async def scenario():
        gate = AdmissionGate(limit=3, max_queue=10, timeout_s=5)
        order: list[str] = []
        release = asyncio.Event()

        async def worker(name: str, count: int, hold: bool):
            async with gate.slot(count):
                order.append(name)
                await (release.wait() if hold else asyncio.sleep(0.01))

        first = asyncio.create_task(worker("two", 2, hold=True))
        await asyncio.sleep(0.001)
        # The three-slot request waits; the single one behind it fits but must not jump the queue.
        big = asyncio.create_task(worker("three", 3, hold=False))
        await asyncio.sleep(0.001)
        small = asyncio.create_task(worker("one", 1, hold=False))
        await asyncio.sleep(0.01)
        waiting = (gate.running, gate.waiting)
        release.set()
        await asyncio.gather(first, big, small)
        return order, waiting, gate.running

    order, waiting, running = run(scenario())
    assert waiting == (2, 2)
    assert order == ["two", "three", "one"]
    assert running == 0


def test_a_big_request_that_gives_up_at_the_head_lets_the_smaller_one_behind_it_in():
    async def scenario():
        gate = AdmissionGate(limit=2, max_queue=10, timeout_s=0.2)
        release, holders = await occupy(gate, 1)

        async def big():
            async with gate.slot(2):
                pass

        big_task = asyncio.create_task(big())
        await asyncio.sleep(0.05)
        small_task = asyncio.create_task(enter_and_leave(gate))  # fits, but waits behind the big one
        await asyncio.sleep(0.05)
        small_waited = not small_task.done()
        with pytest.raises(QueueTimedOut):
            await big_task
        await asyncio.wait_for(small_task, 0.1)  # let in when the big one gave up, long before its own timeout
        release.set()
        await asyncio.gather(*holders)
        return small_waited, gate.running, gate.waiting

    assert run(scenario()) == (True, 0, 0)


@pytest.mark.parametrize("count", [0, 3])
def test_more_slots_than_exist_are_refused_at_once(count):
    async def scenario():
        async with AdmissionGate(limit=2, max_queue=10, timeout_s=5).slot(count):
            pass

    with pytest.raises(ValueError, match="1 to 2 slots"):
        run(scenario())
