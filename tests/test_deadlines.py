"""The one timer strategy (iii_supervisor.deadlines): virtual time, no sockets."""

from __future__ import annotations

import trio
import trio.testing

from iii_supervisor.deadlines import Deadlines


async def test_entries_expire_in_order_and_an_earlier_one_moves_the_timer(
        autojump_clock: trio.testing.MockClock) -> None:
    fired: list[tuple[str, float]] = []
    deadlines: Deadlines[str] = Deadlines(lambda key, when: fired.append((key, when)), lambda key, when: True)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(deadlines.run)
            start = trio.current_time()
            deadlines.add(start + 10, "late")
            await trio.sleep(1)
            deadlines.add(start + 3, "early")  # earlier than what the timer sleeps for
            await trio.sleep(2.5)
            assert fired == [("early", start + 3)]
            await trio.sleep(7)
            assert [key for key, _ in fired] == ["early", "late"]
            assert len(deadlines) == 0
            nursery.cancel_scope.cancel()


async def test_the_owner_decides_whether_a_due_entry_still_matters(autojump_clock: trio.testing.MockClock) -> None:
    current = {"a": 5.0}
    fired: list[str] = []

    def expire(key: str, when: float) -> None:
        if current.get(key) == when:
            fired.append(key)

    deadlines: Deadlines[str] = Deadlines(expire, lambda key, when: current.get(key) == when)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(deadlines.run)
            base = trio.current_time()
            current["a"] = base + 5
            deadlines.add(base + 5, "a")
            current["a"] = base + 8  # the read completed and a new one began: the first entry is stale
            deadlines.add(base + 8, "a")
            await trio.sleep(6)
            assert fired == []
            await trio.sleep(3)
            assert fired == ["a"]
            nursery.cancel_scope.cancel()


def test_stale_entries_are_dropped_so_the_heap_stays_near_its_live_size() -> None:
    live: set[int] = set()
    deadlines: Deadlines[int] = Deadlines(lambda key, when: None, lambda key, when: key in live)
    for i in range(100_000):  # a long timeout, many short-lived waits: one live at a time
        live = {i}
        deadlines.add(1e9 + i, i)
    assert len(deadlines) <= 2048
