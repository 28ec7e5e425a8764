"""Many deadlines, one timer task: the engine's one timer strategy.

The invoker (call deadlines) and the HTTP front (read deadlines) each keep a :class:`Deadlines`:
a heap of ``(when, key)`` served by one task that sleeps in a cancel scope whose deadline is the
earliest entry, moved when an earlier one arrives. Nothing polls: no entries, no wake-ups.

Entries are never removed early (a heap cannot do that cheaply); an entry that no longer matters
— the call was answered, the read completed — is recognised when it comes due: ``expire(key,
when)`` is called and the owner checks that ``when`` is still the key's deadline. So that a long
timeout cannot make the heap grow with the number of events, stale entries are dropped now and
then (``is_current``), which keeps the heap within about twice its live size.

A cancel scope per wait cost ~17 µs on the HTTP hot path; a heap push costs well under 1 µs.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

log = logging.getLogger(__name__)

K = TypeVar("K")

_COMPACT_MIN = 1024


class Deadlines(Generic[K]):
    def __init__(self, expire: Callable[[K, float], None], is_current: Callable[[K, float], bool]) -> None:
        #: called for each entry that came due (the owner checks it still matters)
        self._expire = expire
        #: whether ``(key, when)`` still matters (used to drop stale entries)
        self._is_current = is_current
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()  # ties: keys need not be comparable
        self._compact_at = _COMPACT_MIN
        self._scope: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, key: K) -> None:
        heap = self._heap
        if len(heap) >= self._compact_at:
            heap[:] = [entry for entry in heap if self._is_current(entry[2], entry[0])]
            heapq.heapify(heap)
            self._compact_at = max(_COMPACT_MIN, 2 * len(heap))
        heapq.heappush(heap, (when, next(self._seq), key))
        scope = self._scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the deadlines until cancelled."""
        heap = self._heap
        task_status.started()
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                when, _, key = heapq.heappop(heap)
                try:
                    self._expire(key, when)
                except Exception:  # one owner's bug must not stop every other deadline
                    log.exception("deadline callback for %r failed", key)
