"""The lines workers print, for whoever wants them besides the supervisor's own output.

:class:`WorkerLines` is the engine seam through which the log module receives every line a
worker writes to stdout/stderr, without knowing about processes or the pool: the worker runner
calls :meth:`WorkerLines.line` for each line it relays, and listeners (``listen``) get it. It is
synchronous and must stay cheap: a listener only records the line (the log module appends it to
its ring buffer and hands it to bounded per-trigger buffers); it never blocks.

Line tags. A line printed *inside a handler* is tagged by the worker SDK with the handler's
context — function id, traceparent, and whether it runs for a ``log`` trigger — as a prefix
``\\x1eiii:{json}\\x1e`` (ASCII record separators, which no terminal shows and no ordinary
program prints). The runner strips the tag before the line reaches the supervisor's output, and
hands its content to the listeners. A line whose tag does not parse is relayed as it came.
Tags are only hints a worker gives about its own lines: the worker's name always comes from the
supervisor (which pipe the line came from).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import orjson

TAG_START = b"\x1eiii:"
TAG_END = b"\x1e"
_MAX_TAG = 1024


@attrs.frozen
class LineContext:
    """What the SDK's tag says about a line: where in the worker it was printed."""

    function_id: str | None = None
    traceparent: str | None = None
    #: printed while handling a ``log`` trigger (never fed back to log triggers)
    log_trigger: bool = False


def tag(context: LineContext) -> str:
    """The prefix the SDK writes before a line printed inside a handler."""
    fields: dict[str, Any] = {"f": context.function_id, "t": context.traceparent}
    if context.log_trigger:
        fields["l"] = 1
    return "\x1eiii:" + orjson.dumps(fields).decode() + "\x1e"


def untag(line: bytes) -> tuple[bytes, LineContext | None]:
    """``(line without its tag, the tag's context)``; an untagged or malformed line comes back as is."""
    if not line.startswith(TAG_START):
        return line, None
    end = line.find(TAG_END, len(TAG_START), _MAX_TAG)
    if end < 0:
        return line, None
    try:
        fields = orjson.loads(line[len(TAG_START):end])
    except orjson.JSONDecodeError:
        return line, None
    if not isinstance(fields, dict):
        return line, None
    function_id, traceparent = fields.get("f"), fields.get("t")
    return line[end + 1:], LineContext(
        function_id=function_id if isinstance(function_id, str) else None,
        traceparent=traceparent if isinstance(traceparent, str) else None,
        log_trigger=bool(fields.get("l")),
    )


#: ``listener(worker_name, pid, line, err, context)``; ``line`` has no newline and no tag
LineListener = Callable[[str, int, bytes, bool, "LineContext | None"], None]


class WorkerLines:
    """Fan-out of worker output lines to listeners (the log module). See the module docstring."""

    def __init__(self) -> None:
        self._listeners: list[LineListener] = []

    def listen(self, listener: LineListener) -> Callable[[], None]:
        """Add ``listener``; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def line(self, worker: str, pid: int, line: bytes, err: bool, context: LineContext | None) -> None:
        for listener in self._listeners:
            listener(worker, pid, line, err, context)
