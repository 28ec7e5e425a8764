"""Rate-limited warnings: at most one line per key per ``interval`` seconds, and a count of the rest.

A hostile or broken client can make the supervisor log one warning per input (a fuzz run of
22,000 inputs logged 25,000 lines). :class:`RateLimiter` is the pure decision — the clock is
injected, nothing sleeps — and :class:`RateLimitedLog` applies it to a :mod:`logging` logger::

    refused = RateLimitedLog(log, interval=10.0)
    refused.warning("worker socket refused", "worker socket: refused a connection: %s", reason)

The first line of a key is logged at once. Further lines of that key within ``interval`` seconds
of it are counted, not logged. When the window ends, the next line of that key is logged with
``(N similar line(s) suppressed)`` appended, or, if none comes, :meth:`RateLimitedLog.flush` (run
by :meth:`RateLimitedLog.run` in a nursery) logs one line saying how many were suppressed.

Memory is bounded: at most ``max_keys`` keys are tracked; the least recently logged one is
forgotten first (its pending count is still reported).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

import attrs
import trio


@attrs.define
class _Window:
    opened: float  #: when the last line of this key was logged
    suppressed: int = 0


class RateLimiter:
    """Pure: decides which lines of a key are logged. ``clock`` is a monotonic clock in seconds."""

    def __init__(self, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()  # least recently logged first
        #: counts of suppressed lines of keys forgotten before they were reported
        self._evicted: dict[Hashable, int] = {}

    def hit(self, key: Hashable) -> int | None:
        """One more line of ``key``. ``None``: do not log it. An int: log it; the int is how many
        lines of ``key`` were suppressed since the previous one logged (usually 0)."""
        now = self.clock()
        window = self._windows.get(key)
        if window is not None and now - window.opened < self.interval:
            window.suppressed += 1
            return None
        if window is None:
            earlier = self._evicted.pop(key, 0)
            self._make_room()
            self._windows[key] = _Window(now)
            return earlier
        earlier, window.opened, window.suppressed = window.suppressed, now, 0
        self._windows.move_to_end(key)
        return earlier

    def expired(self) -> list[tuple[Hashable, int]]:
        """Keys whose window has ended with lines suppressed, as ``(key, count)``; each is reported
        once (the counts are reset, the next line of the key is logged at once)."""
        now = self.clock()
        due = [(key, n) for key, n in self._evicted.items()]
        self._evicted.clear()
        for key, window in list(self._windows.items()):
            if now - window.opened >= self.interval:
                if window.suppressed:
                    due.append((key, window.suppressed))
                del self._windows[key]  # a key that is quiet again costs nothing
        return due

    def next_due(self) -> float | None:
        """The clock time at which :meth:`expired` will next have something, or ``None``."""
        if self._evicted:
            return self.clock()
        due = [w.opened + self.interval for w in self._windows.values() if w.suppressed]
        return min(due) if due else None

    def _make_room(self) -> None:
        while len(self._windows) >= self.max_keys:
            key, window = self._windows.popitem(last=False)
            if window.suppressed:
                if len(self._evicted) >= self.max_keys:
                    return  # never grows past 2 * max_keys: drop the oldest key's count silently
                self._evicted[key] = window.suppressed


class RateLimitedLog:
    """A logger's warnings through a :class:`RateLimiter`. Use from the trio thread only."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        self.logger = logger
        self.limiter = RateLimiter(interval, clock=clock, max_keys=max_keys)
        self._wakeup = trio.lowlevel.ParkingLot()

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` ago. True if logged."""
        earlier = self.limiter.hit(key)
        if earlier is None:
            if self._wakeup:  # a flusher is parked, waiting for a first suppressed line
                self._wakeup.unpark_all()
            return False
        if earlier:
            msg += " (%d similar line(s) suppressed)"
            args = (*args, earlier)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def flush(self) -> None:
        """Log one line per key whose window ended with lines suppressed."""
        for key, count in self.limiter.expired():
            self.logger.warning("%s: %d similar line(s) suppressed in the last %gs", key, count,
                                self.limiter.interval)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report suppressed counts when their window ends (sleeps while nothing is suppressed)."""
        task_status.started()
        while True:
            due = self.limiter.next_due()
            if due is None:
                await self._wakeup.park()
                continue
            await trio.sleep(max(0.0, due - self.limiter.clock()))
            self.flush()
