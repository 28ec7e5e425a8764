"""A one-reader, unbounded, never-blocking queue for events routed to a waiting task.

The HTTP front gets each request's answer (the ``invocationresult`` and whatever the worker sent
on the response channel) through one :class:`Inbox`. A ``trio`` memory channel does the same job
with more machinery (a state object, two endpoints, statistics, clones); on the HTTP hot path it
cost about 10 µs per request, for features nobody here uses.

Senders never block: a writer that respects the channel window (the SDK) bounds what it sends.
:meth:`Inbox.get` returns at once when something is queued (no checkpoint: the caller's loop
waits elsewhere on every pass) and otherwise parks the reader until :meth:`put` or
:meth:`close`.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Inbox(Generic[T]):
    __slots__ = ("_items", "_reader", "closed")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._reader: trio.lowlevel.Task | None = None
        #: no more items will come (queued ones can still be read)
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Queue ``item`` and wake the reader; dropped once the inbox is closed."""
        if self.closed:
            return
        self._items.append(item)
        self._wake()

    def close(self) -> None:
        """No more items: the reader gets what is queued, then :class:`trio.EndOfChannel`."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            trio.lowlevel.reschedule(reader)

    async def get(self) -> T:
        """The next item; waits for one. Raises :class:`trio.EndOfChannel` once closed and empty."""
        while not self._items:
            if self.closed:
                raise trio.EndOfChannel
            if self._reader is not None:
                raise trio.BusyResourceError("another task is already reading this inbox")
            self._reader = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._reader = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return self._items.popleft()
