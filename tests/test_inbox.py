"""The Inbox: the one-reader queue that carries a request's answer to the HTTP front."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from iii_supervisor.inbox import Inbox


async def test_items_come_out_in_order_without_waiting_when_queued() -> None:
    with trio.fail_after(5):
        inbox: Inbox[int] = Inbox()
        for i in range(3):
            inbox.put(i)
        assert len(inbox) == 3
        assert [await inbox.get() for _ in range(3)] == [0, 1, 2]
        assert len(inbox) == 0


async def test_get_waits_for_put() -> None:
    with trio.fail_after(5):
        inbox: Inbox[str] = Inbox()
        got: list[str] = []

        async def reader() -> None:
            got.append(await inbox.get())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            inbox.put("answer")
        assert got == ["answer"]


async def test_close_lets_the_reader_drain_then_ends() -> None:
    with trio.fail_after(5):
        inbox: Inbox[int] = Inbox()
        inbox.put(1)
        inbox.close()
        inbox.put(2)  # dropped: nothing comes after close
        assert await inbox.get() == 1
        with pytest.raises(trio.EndOfChannel):
            await inbox.get()


async def test_close_wakes_a_waiting_reader() -> None:
    with trio.fail_after(5):
        inbox: Inbox[int] = Inbox()
        outcome: list[str] = []

        async def reader() -> None:
            try:
                await inbox.get()
            except trio.EndOfChannel:
                outcome.append("ended")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            inbox.close()
        assert outcome == ["ended"]


async def test_a_cancelled_reader_leaves_the_inbox_usable() -> None:
    with trio.fail_after(5):
        inbox: Inbox[int] = Inbox()
        with trio.move_on_after(0.01):
            await inbox.get()
        inbox.put(7)  # must not reschedule the task that gave up
        assert await inbox.get() == 7


async def test_a_second_reader_is_refused() -> None:
    with trio.fail_after(5):
        inbox: Inbox[int] = Inbox()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbox.get)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await inbox.get()
            inbox.put(1)  # releases the first reader
