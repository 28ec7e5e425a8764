"""Feeding a trigger's bounded buffer: what the log and state modules share.

Each ``log``/``state`` trigger has a bounded memory channel between the module and the task
that calls its function. A slow function must not slow the producers (workers logging, writes
committing), so an item that does not fit is dropped and counted, and a line says so at most
once per :data:`DROP_LOG_INTERVAL` seconds per trigger.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from ..registry import TriggerEntry

#: a trigger that is not keeping up is logged at most this often (seconds)
DROP_LOG_INTERVAL = 10.0


class Fed(Protocol):
    trigger: TriggerEntry
    dropped: int
    last_drop_log: float

    @property
    def send(self) -> trio.MemorySendChannel[Any]: ...


def offer(sub: Fed, item: Any, *, what: str, buffer: int, log: logging.Logger) -> None:
    """Queue ``item`` for ``sub``'s function, or drop and count it when its buffer is full."""
    try:
        sub.send.send_nowait(item)
    except trio.WouldBlock:
        sub.dropped += 1
        now = trio.current_time()
        if now - sub.last_drop_log >= DROP_LOG_INTERVAL:
            sub.last_drop_log = now
            log.warning("%s trigger %s (%s) is not keeping up: %d %s dropped so far (buffer %d)",
                        sub.trigger.trigger_type, sub.trigger.id, sub.trigger.function_id, sub.dropped,
                        what, buffer)
    except trio.ClosedResourceError:
        pass
