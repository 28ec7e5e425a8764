"""The SDK's ``logger``, and the invocation context it (and ``iii.trigger``) reads.

``from iii_supervisor import logger`` (or ``Logger(trace_id=None, service_name=None,
span_id=None)``, as in the official SDK) gives ``debug/info/warn/error(message, data=None)``.
An entry is sent fire-and-forget to the supervisor's log module (``engine::log::<level>``) with
the worker's name and, inside a handler, the function's id and the call's trace; outside a
supervised worker it goes to Python ``logging`` (logger ``iii.logger``), like the official SDK
without OpenTelemetry.

The invocation context (function id, ``traceparent``, ``baggage``) is a context variable set by
the client for each invocation it serves; trio copies it into the thread of a sync handler, so
both kinds of handlers see their own. It makes:

- ``iii.trigger`` from inside a handler continue the handler's trace (same trace id, new span)
  and carry its baggage (which holds the log-trigger mark that prevents log loops);
- what a handler prints tagged with its context (see ``iii_supervisor/worker_lines.py``), so
  that the supervisor's log entries of printed lines name the function and the trace too.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from ..errors import EngineError
from ..protocol import InvokeFunction
from ..tracing import child_traceparent, from_log_trigger, make_traceparent, new_span_id, parse_traceparent
from ..worker_lines import LineContext, tag

if TYPE_CHECKING:
    from .client import III

_fallback = logging.getLogger("iii.logger")


@attrs.define
class Invocation:
    """The call a handler is serving."""

    function_id: str
    traceparent: str | None = None
    baggage: str | None = None
    #: its trace id, parsed once (on the first call the handler makes); "" if it has none
    trace_id: str | None = None

    def child_traceparent(self) -> str:
        """A traceparent for a call made now: this trace, a new span."""
        if self.trace_id is None:
            ids = parse_traceparent(self.traceparent)
            self.trace_id = ids[0] if ids else ""
        return make_traceparent(self.trace_id, new_span_id()) if self.trace_id else child_traceparent(None)


_INVOCATION: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("iii_invocation", default=None)
_client: III | None = None


def current_invocation() -> Invocation | None:
    """The invocation the calling code runs for (None outside handlers)."""
    return _INVOCATION.get()


def enter_invocation(msg: InvokeFunction) -> None:
    """Called by the client at the start of the task that serves ``msg`` (task-local)."""
    _INVOCATION.set(Invocation(msg.function_id, msg.traceparent, msg.baggage))


def outgoing_context(traceparent: str | None = None, baggage: str | None = None) -> tuple[str | None, str | None]:
    """``(traceparent, baggage)`` for a call made now: inside a handler, its trace goes on."""
    current = _INVOCATION.get()
    if current is None:
        return traceparent, baggage
    return traceparent or current.child_traceparent(), baggage or current.baggage


def attach(client: III) -> None:
    """The client of this process: where ``logger`` sends entries. Also tags printed lines."""
    global _client
    _client = client
    install_output_tags()


class Logger:
    """Log entries for the supervisor's log module (``iii-supervisor logs``, ``log`` triggers)."""

    def __init__(self, trace_id: str | None = None, service_name: str | None = None,
                 span_id: str | None = None) -> None:
        self.trace_id = trace_id
        self.service_name = service_name
        self.span_id = span_id

    def debug(self, message: Any, data: Any = None) -> None:
        self._emit("debug", message, data)

    def info(self, message: Any, data: Any = None) -> None:
        self._emit("info", message, data)

    def warn(self, message: Any, data: Any = None) -> None:
        self._emit("warn", message, data)

    warning = warn

    def error(self, message: Any, data: Any = None) -> None:
        self._emit("error", message, data)

    def _emit(self, level: str, message: Any, data: Any) -> None:
        text = message if isinstance(message, str) else str(message)
        current = _INVOCATION.get()
        client = _client
        if client is None:
            _fallback.log(logging.WARNING if level == "warn" else logging.getLevelName(level.upper()),
                          "%s%s", text, "" if data is None else f" {data!r}")
            return
        traceparent = current.traceparent if current is not None else None
        ids = parse_traceparent(traceparent)
        payload: dict[str, Any] = {
            "message": text, "data": data, "sdk": True,
            "function_name": current.function_id if current is not None else None,
            "trace_id": self.trace_id or (ids[0] if ids else None),
            "span_id": self.span_id or (ids[1] if ids else None),
        }
        if self.service_name is not None:
            payload["service_name"] = self.service_name
        msg = InvokeFunction(function_id=f"engine::log::{level}", data=payload, traceparent=traceparent,
                             baggage=current.baggage if current is not None else None)
        try:
            try:
                client._send_threadsafe(msg)
            except TypeError:  # data that JSON cannot carry: send its repr instead
                payload["data"] = {"repr": repr(data)}
                client._send_threadsafe(msg)
        except (EngineError, RuntimeError):  # not connected (any more): keep the entry somewhere
            _fallback.log(logging.WARNING if level == "warn" else logging.getLevelName(level.upper()), "%s", text)


#: ``from iii_supervisor import logger``
logger = Logger()


class _TaggedOutput:
    """``sys.stdout``/``sys.stderr`` wrapper: a line begun inside a handler gets the context tag.

    Lines begun outside handlers pass through unchanged (and cost a dictionary lookup). The tag
    is written at the start of a line only, tracked per thread, so a line written in pieces
    (``print`` writes its arguments, separators and end separately) gets one tag.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._open: dict[int, bool] = {}  # thread id → a line is in progress on it

    def write(self, text: str) -> int:
        if not text:
            return 0
        thread = threading.get_ident()
        current = _INVOCATION.get()
        if current is None and thread not in self._open:
            if not text.endswith("\n"):
                self._open[thread] = True
            return self._stream.write(text)
        out: list[str] = []
        start = 0
        while start < len(text):
            newline = text.find("\n", start)
            end = len(text) if newline < 0 else newline + 1
            piece, start = text[start:end], end
            if thread not in self._open:
                if current is not None:
                    out.append(tag(LineContext(current.function_id, current.traceparent,
                                               from_log_trigger(current.baggage))))
                self._open[thread] = True
            out.append(piece)
            if piece.endswith("\n"):
                self._open.pop(thread, None)
        self._stream.write("".join(out))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, buffer …
        return getattr(self._stream, name)


def install_output_tags() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` (once) so printed lines carry their handler's context."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _TaggedOutput):
            setattr(sys, name, _TaggedOutput(stream))
