"""Trace context: W3C ``traceparent`` values, the log-trigger origin mark, and the call context.

Pure (stdlib only), used by the engine and the worker SDK alike.

- Every invocation carries a ``traceparent`` (``00-<32 hex trace id>-<16 hex span id>-<flags>``).
  The engine gives one to a call that has none (or a malformed one); a call made from inside a
  handler continues the handler's trace with a fresh span id (the SDK does this for
  ``iii.trigger``); the HTTP front takes an incoming ``traceparent`` header.
- ``baggage`` (W3C baggage, ``key=value,…``) travels with it. The log module marks the calls it
  makes to ``log`` trigger handlers with :data:`LOG_ORIGIN`; the SDK carries the mark on to every
  call and log entry made inside such a handler, so those entries are not fed back to log
  triggers (no loop), however many calls away they are made.
- :func:`call_context` tells an in-process built-in function who called it and with which trace
  (the invoker sets it around the call), without changing the built-ins' one-argument signature.
"""

from __future__ import annotations

import contextvars
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager

import attrs

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

#: baggage key of calls made (directly or further down) by a ``log`` trigger's handler
LOG_ORIGIN = "iii.origin"
LOG_ORIGIN_VALUE = "log-trigger"


# Ids come from ``random`` (not ``os.urandom``): they need to be unique, not secret, and
# ``os.urandom`` releases the GIL, which costs the event loop a thread switch whenever another
# thread (the store's writer) is runnable: measured ~50 µs per id under load.
_rng = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(16)))  # a forked child: its own ids


def new_trace_id() -> str:
    return f"{_rng.getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    return f"{_rng.getrandbits(64) or 1:016x}"


def parse_traceparent(value: object) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of a valid ``traceparent``, else None (version ff, zero ids: invalid)."""
    if not isinstance(value, str) or len(value) < 55:
        return None
    match = _TRACEPARENT.fullmatch(value[:55]) if len(value) == 55 or value[55] == "-" else None
    if match is None or value.startswith("ff") or match[1] == _ZERO_TRACE or match[2] == _ZERO_SPAN:
        return None
    return match[1], match[2]


def make_traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def new_traceparent() -> str:
    # one f-string, no helper calls: this runs for every HTTP request and every call without one
    return f"00-{_rng.getrandbits(128) or 1:032x}-{_rng.getrandbits(64) or 1:016x}-01"


def ensure_traceparent(value: str | None) -> str:
    """``value`` if it is a valid traceparent, else a new one (a new trace)."""
    return value if value is not None and parse_traceparent(value) is not None else new_traceparent()


def child_traceparent(parent: str | None) -> str:
    """The same trace as ``parent`` with a new span id (a new trace when ``parent`` is invalid)."""
    ids = parse_traceparent(parent)
    return make_traceparent(ids[0], new_span_id()) if ids is not None else new_traceparent()


def trace_id_of(traceparent: str | None) -> str | None:
    ids = parse_traceparent(traceparent)
    return ids[0] if ids is not None else None


# --- baggage --------------------------------------------------------------------------------


def baggage_get(baggage: str | None, key: str) -> str | None:
    if not baggage:
        return None
    for member in baggage.split(","):
        name, sep, value = member.partition("=")
        if sep and name.strip() == key:
            return value.split(";", 1)[0].strip()
    return None


def baggage_with(baggage: str | None, key: str, value: str) -> str:
    """``baggage`` with ``key=value`` set (replacing an earlier value of ``key``)."""
    members = [m for m in (baggage or "").split(",") if m.strip() and m.partition("=")[0].strip() != key]
    return ",".join([*members, f"{key}={value}"])


def from_log_trigger(baggage: str | None) -> bool:
    """True when the call (or entry) comes from inside a ``log`` trigger's handler."""
    return baggage_get(baggage, LOG_ORIGIN) == LOG_ORIGIN_VALUE


def mark_log_trigger(baggage: str | None) -> str:
    return baggage_with(baggage, LOG_ORIGIN, LOG_ORIGIN_VALUE)


# --- the context of an in-process call ------------------------------------------------------


@attrs.frozen
class CallContext:
    """Who called an in-process built-in, and under which trace."""

    #: name of the calling peer (a worker's name, ``control`` …); ``""`` for the engine itself
    caller: str = ""
    traceparent: str | None = None
    baggage: str | None = None


_CALL: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("iii_call_context", default=None)


def call_context() -> CallContext:
    """The context of the built-in call being served (an empty one outside a call)."""
    return _CALL.get() or CallContext()


@contextmanager
def calling(context: CallContext) -> Iterator[None]:
    """Serve a built-in call under ``context`` (the invoker wraps each built-in call in it)."""
    token = _CALL.set(context)
    try:
        yield
    finally:
        _CALL.reset(token)
