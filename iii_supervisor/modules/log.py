"""The log module: log entries from workers, a ring buffer to follow them, and ``log`` triggers.

Where entries come from:

- the SDK's ``logger`` (``from iii_supervisor import logger``), which calls
  ``engine::log::{debug,info,warn,error}`` fire-and-forget with the handler's function name and
  trace; any client may call these built-ins itself (``{message, data?, trace_id?, span_id?,
  function_name?}``);
- every line a worker prints: stdout is ``info``, stderr ``error`` (through the engine's
  :class:`~iii_supervisor.worker_lines.WorkerLines`; a line printed inside a handler carries the
  SDK's tag with the function name and trace).

Every entry is ``{id, timestamp, date, level, message, data, worker_name, function_name,
trace_id, span_id, source}`` and goes into an in-memory ring buffer (``[log] buffer_size``),
which ``engine::logs::list`` (and ``iii-supervisor logs``) reads.

``log`` triggers (``config: {level?}``) get every new entry of that level *and above* (``all``,
or no level, means everything; the reference engine matches the level exactly). Each trigger has
its own bounded buffer and one task that calls its function entry after entry: a slow handler
loses entries (counted, and logged at most every 10 s) instead of slowing anything else.

No feedback loop: a trigger's handler is called with the log-trigger mark in its ``baggage``
(see tracing.py). The SDK passes the mark on to every call and entry made inside the handler,
however indirect, and tags what the handler prints; entries carrying it are kept in the buffer
but never fed to log triggers.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import attrs
import orjson
import trio

from ..clitools import add_common, control_client, print_json
from ..config import Config, positive
from ..errors import EngineError, InvocationError, TriggerRegistrationError
from ..invocation import Invoker
from ..registry import Registry, TriggerEntry, TriggerTypeEntry
from ..tracing import (
    call_context,
    from_log_trigger,
    make_traceparent,
    mark_log_trigger,
    new_span_id,
    new_traceparent,
    parse_traceparent,
)
from ..trigger_config import known_keys
from ..trigger_config import short as _short
from ..worker_lines import LineContext, WorkerLines
from .base import ModuleContext, ModuleSpec
from .trigger_feed import offer

log = logging.getLogger(__name__)

#: level name → rank; a trigger or filter at a level gets that level and the ones above
LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
_LEVEL_ALIASES = {"warning": "warn", "err": "error", "information": "info"}
#: about this many bytes of entries per engine::logs::list answer at most (the rest: next cursor)
LIST_BUDGET = 4 * 1024 * 1024


def level_rank(level: Any, *, what: str) -> int:
    """The rank of a level name (``all`` / None: every level); ValueError names a bad one."""
    if level is None or level == "all":
        return 0
    if isinstance(level, str):
        name = _LEVEL_ALIASES.get(level.lower(), level.lower())
        if name in LEVELS:
            return LEVELS[name]
    raise ValueError(f"{what} must be one of {', '.join(LEVELS)} or 'all', got {level!r}")


@attrs.frozen(kw_only=True)
class LogConfig:
    #: Entries kept in memory for ``engine::logs::list`` / ``iii-supervisor logs`` (oldest dropped).
    buffer_size: int = attrs.field(default=10_000, validator=positive)
    #: Characters of a message kept; the rest is cut (the entry says how much).
    max_message_size: int = attrs.field(default=16 * 1024, validator=positive)
    #: Bytes of an entry's ``data`` (as JSON) kept; larger data is replaced by ``{"truncated": size}``.
    max_data_size: int = attrs.field(default=16 * 1024, validator=positive)
    #: Entries queued for one ``log`` trigger whose handler is busy; beyond this they are dropped.
    trigger_buffer: int = attrs.field(default=1024, validator=positive)


@attrs.define(eq=False)
class _Subscription:
    trigger: TriggerEntry
    min_rank: int
    send: trio.MemorySendChannel[dict[str, Any]]
    receive: trio.MemoryReceiveChannel[dict[str, Any]]
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    delivered: int = 0
    dropped: int = 0
    failed: int = 0
    last_drop_log: float = -math.inf


class LogModule:
    def __init__(self, config: LogConfig, registry: Registry, invoker: Invoker,
                 worker_lines: WorkerLines | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.registry = registry
        self.invoker = invoker
        self.worker_lines = worker_lines
        self.clock = clock
        self.entries: deque[dict[str, Any]] = deque(maxlen=config.buffer_size)
        #: approximate encoded size of each entry (aligned with ``entries``), to bound an answer
        self._sizes: deque[int] = deque(maxlen=config.buffer_size)
        self._next_id = 1
        self._subscriptions: dict[str, _Subscription] = {}
        #: trace ids of recent log-trigger deliveries (bounded, oldest forgotten first)
        self._trigger_traces: dict[str, None] = {}
        self._nursery: trio.Nursery | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        stop_listening = self.worker_lines.listen(self._on_line) if self.worker_lines is not None else None
        records = _SupervisorRecords(self, trio.lowlevel.current_trio_token())
        supervisor_log = logging.getLogger("iii_supervisor")
        supervisor_log.addHandler(records)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.registry.add_trigger_type(TriggerTypeEntry(
                    "log", "Log entries of a level and above: {level?: debug|info|warn|error|all}", self))
                for level in LEVELS:
                    self.registry.add_builtin(f"engine::log::{level}", self._builtin_log(level),
                                              f"Record a {level} log entry: {{message, data?, trace_id?, span_id?}}")
                self.registry.add_builtin("engine::log::entries", self._entries,
                                          "Record several entries: {entries: [{level, message, data?, trace_id?, "
                                          "span_id?, function_name?}], worker_name?, source?} (the /otel endpoint)")
                self.registry.add_builtin("engine::logs::list", self._list,
                                          "Recent log entries: {worker?, level?, trace_id?, function?, limit?, "
                                          "since_id?}")
                for sub in self._subscriptions.values():  # (bindings made before we ran)
                    nursery.start_soon(self._deliver, sub)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            supervisor_log.removeHandler(records)
            if stop_listening is not None:
                stop_listening()

    # --- entries ------------------------------------------------------------------------------

    def record(self, level: str, message: str, data: Any = None, *, worker_name: str | None = None,
               function_name: str | None = None, trace_id: str | None = None, span_id: str | None = None,
               source: str = "call", feed: bool = True) -> dict[str, Any]:
        """Add an entry to the ring buffer and (unless ``feed`` is False) to the log triggers."""
        limit = self.config.max_message_size
        if len(message) > limit:
            message = f"{message[:limit]}… [{len(message) - limit} more characters cut]"
        size = len(message) + 300
        if data is not None:
            try:
                data_size = len(orjson.dumps(data, default=str))
            except TypeError as exc:  # (nested deeper than orjson goes)
                data, data_size = {"unencodable": str(exc)}, 64
            if data_size > self.config.max_data_size:
                data = {"truncated": data_size}
            size += min(data_size, self.config.max_data_size)
        now = self.clock()
        entry = {
            "id": self._next_id,
            "timestamp": int(now * 1000),
            "date": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "message": message,
            "data": data,
            "worker_name": worker_name,
            "function_name": function_name,
            "trace_id": trace_id,
            "span_id": span_id,
            "source": source,
        }
        self._next_id += 1
        self.entries.append(entry)
        self._sizes.append(size)
        if feed:
            self._feed(entry)
        return entry

    def _on_line(self, worker: str, pid: int, line: bytes, err: bool, context: LineContext | None) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if not text:
            return
        ids = parse_traceparent(context.traceparent) if context is not None else None
        self.record("error" if err else "info", text, worker_name=worker,
                    function_name=context.function_id if context is not None else None,
                    trace_id=ids[0] if ids else None, span_id=ids[1] if ids else None,
                    source="stderr" if err else "stdout",
                    feed=not (context is not None and context.log_trigger))

    def _builtin_log(self, level: str) -> Callable[[Any], Any]:
        async def handler(data: Any) -> None:
            if isinstance(data, str):
                data = {"message": data}
            if not isinstance(data, dict) or not isinstance(data.get("message"), str):
                raise InvocationError(f'engine::log::{level} needs {{"message": "<text>", "data"?: ...}}, got '
                                      f"{_short(data)}", code="invalid_argument")
            ctx = call_context()
            ids = parse_traceparent(ctx.traceparent)
            trace_id = _str_or(data.get("trace_id"), ids[0] if ids else None)
            span_id = _str_or(data.get("span_id"), ids[1] if ids else None)
            self.record(level, data["message"], data.get("data"), worker_name=ctx.caller or "engine",
                        function_name=_str_or(data.get("function_name"), None), trace_id=trace_id, span_id=span_id,
                        source="sdk" if data.get("sdk") else "call",
                        feed=not from_log_trigger(ctx.baggage))
        return handler

    async def _entries(self, data: Any) -> dict[str, int]:
        """Several entries at once (what the WebSocket door's ``/otel`` endpoint decodes from OTLP).

        ``worker_name`` and ``source`` are honoured only from inside the engine; a worker calling
        this is recorded under its own name. An entry under the trace of a recent ``log``-trigger
        delivery is kept but not fed to the triggers: OTLP records carry no baggage, so the trace is
        the only mark of a record made inside a trigger's handler."""
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise InvocationError(f'engine::log::entries needs {{"entries": [...]}}, got {_short(data)}',
                                  code="invalid_argument")
        ctx = call_context()
        internal = not ctx.caller
        worker = _str_or(data.get("worker_name"), "engine") if internal else ctx.caller
        source = (_str_or(data.get("source"), None) or "otel") if internal else "call"
        marked = from_log_trigger(ctx.baggage)
        recorded = 0
        for item in entries[:self.config.buffer_size]:
            if not isinstance(item, dict) or not isinstance(item.get("message"), str):
                continue
            level = item.get("level")
            if level not in LEVELS:
                level = "info"
            trace_id = _str_or(item.get("trace_id"), None)
            self.record(level, item["message"], item.get("data"), worker_name=worker,
                        function_name=_str_or(item.get("function_name"), None), trace_id=trace_id,
                        span_id=_str_or(item.get("span_id"), None), source=source,
                        feed=not marked and trace_id not in self._trigger_traces)
            recorded += 1
        return {"recorded": recorded}

    # --- engine::logs::list ---------------------------------------------------------------------

    async def _list(self, data: Any) -> dict[str, Any]:
        query = data if isinstance(data, dict) else {}
        try:
            min_rank = level_rank(query.get("level"), what="level")
        except ValueError as exc:
            raise InvocationError(str(exc), code="invalid_argument") from None
        worker, trace_id, function = query.get("worker"), query.get("trace_id"), query.get("function")
        limit, since = query.get("limit", 100), query.get("since_id")
        for name, value in (("limit", limit), ("since_id", since)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvocationError(f"{name} must be a non-negative integer, got {_short(value)}",
                                      code="invalid_argument")
        limit = min(limit, self.config.buffer_size)

        def matches(e: dict[str, Any]) -> bool:
            return (LEVELS[e["level"]] >= min_rank and (worker is None or e["worker_name"] == worker)
                    and (trace_id is None or e["trace_id"] == trace_id)
                    and (function is None or e["function_name"] == function))

        newest = self._next_id - 1
        budget = LIST_BUDGET  # an answer must fit in a frame, whatever `limit` asks for
        if since is None:  # the last `limit` entries that match, oldest first
            found: list[dict[str, Any]] = []
            for entry, size in zip(reversed(self.entries), reversed(self._sizes), strict=True):
                if len(found) >= limit or (found and size > budget):
                    break
                if matches(entry):
                    found.append(entry)
                    budget -= size
            found.reverse()
            cursor = newest
        else:  # what came after `since`, oldest first; the cursor says where to go on
            found, cursor = [], since
            first = self.entries[0]["id"] if self.entries else self._next_id
            start = max(0, since + 1 - first)
            if since > newest:  # a cursor from before a restart (ids start over): everything is new
                start, cursor = 0, 0
            for entry, size in zip(itertools.islice(self.entries, start, None),
                                   itertools.islice(self._sizes, start, None), strict=True):
                if len(found) >= limit or (found and size > budget):
                    break
                cursor = entry["id"]
                if matches(entry):
                    found.append(entry)
                    budget -= size
        return {"entries": found, "cursor": cursor,
                "triggers": [{"id": s.trigger.id, "function_id": s.trigger.function_id, "delivered": s.delivered,
                              "dropped": s.dropped, "failed": s.failed}
                             for s in self._subscriptions.values()]}

    # --- log triggers ---------------------------------------------------------------------------

    def register(self, trigger: TriggerEntry) -> None:
        config = trigger.config or {}
        known_keys(config, ("level",), f"log trigger {trigger.id!r}", shown="'level'")
        try:
            rank = level_rank(config.get("level"), what=f"log trigger {trigger.id!r}: level")
        except ValueError as exc:
            raise TriggerRegistrationError(str(exc)) from None
        send, receive = trio.open_memory_channel[dict[str, Any]](self.config.trigger_buffer)
        sub = _Subscription(trigger, rank, send, receive)
        self._subscriptions[trigger.id] = sub
        if self._nursery is not None:
            self._nursery.start_soon(self._deliver, sub)

    def unregister(self, trigger: TriggerEntry) -> None:
        sub = self._subscriptions.pop(trigger.id, None)
        if sub is not None:
            sub.scope.cancel()
            sub.send.close()

    def _feed(self, entry: dict[str, Any]) -> None:
        rank = LEVELS[entry["level"]]
        for sub in self._subscriptions.values():
            if rank < sub.min_rank:
                continue
            offer(sub, entry, what="entries", buffer=self.config.trigger_buffer, log=log)

    async def _deliver(self, sub: _Subscription) -> None:
        """Call the trigger's function with each entry, one at a time, in order."""
        with sub.scope:
            async for entry in sub.receive:
                payload = {"type": "log", **entry}
                traceparent = _entry_traceparent(entry)
                self._remember_trace(traceparent[3:35])
                try:
                    await self.invoker.call(sub.trigger.function_id, payload,
                                            traceparent=traceparent, baggage=mark_log_trigger(None))
                    sub.delivered += 1
                except EngineError as exc:
                    sub.failed += 1
                    log.debug("log trigger %s: %s failed: %s", sub.trigger.id, sub.trigger.function_id, exc)


    def _remember_trace(self, trace_id: str) -> None:
        traces = self._trigger_traces
        traces.pop(trace_id, None)
        traces[trace_id] = None
        if len(traces) > TRIGGER_TRACES:
            del traces[next(iter(traces))]


#: trace ids of log-trigger deliveries remembered (entries under them are not fed again)
TRIGGER_TRACES = 4096


class _SupervisorRecords(logging.Handler):
    """The supervisor's own log records (info and above) as entries of worker ``iii-supervisor``.

    They are kept for ``iii-supervisor logs`` but not fed to log triggers: a record can be the
    consequence of a trigger's own call (a failed void call it made, say), and a trigger that
    gets what its failures log could feed itself. Records from other threads (the store's) are
    handed to the trio thread, which owns the ring buffer."""

    _LEVEL = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}

    def __init__(self, module: LogModule, token: trio.lowlevel.TrioToken) -> None:
        super().__init__(logging.INFO)
        self.module = module
        self.token = token

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = self._LEVEL.get(record.levelno, "error" if record.levelno > logging.WARNING else "debug")
            add = partial(self.module.record, level, record.getMessage(), worker_name="iii-supervisor",
                          source="supervisor", feed=False)
            if trio.lowlevel.in_trio_run() and trio.lowlevel.current_trio_token() is self.token:
                add()
            else:
                self.token.run_sync_soon(add)
        except trio.RunFinishedError:
            pass
        except Exception:  # noqa: BLE001 - logging must never raise into the code that logs
            self.handleError(record)


def _entry_traceparent(entry: dict[str, Any]) -> str:
    """The handler continues the entry's trace (a new one if the entry has none)."""
    trace_id = entry.get("trace_id")
    if isinstance(trace_id, str) and parse_traceparent(make_traceparent(trace_id, new_span_id())):
        return make_traceparent(trace_id, new_span_id())
    return new_traceparent()


def _str_or(value: Any, default: str | None) -> str | None:
    return value if isinstance(value, str) and value else default


# --- the CLI ------------------------------------------------------------------------------------


def format_entry(entry: dict[str, Any]) -> str:
    """One line per entry: ``09:30:17.123 INFO  worker function: message {data} [trace …]``."""
    when = entry["date"][11:23] if isinstance(entry.get("date"), str) else "--:--:--.---"
    where = entry.get("worker_name") or "-"
    if entry.get("function_name"):
        where += f" {entry['function_name']}"
    text = f"{when} {entry['level'].upper():<5} {where}: {entry['message']}"
    if entry.get("data") is not None:
        text += " " + orjson.dumps(entry["data"]).decode()
    if entry.get("trace_id"):
        text += f" [trace {entry['trace_id']}]"
    return text


def _cmd_logs(args: argparse.Namespace, config: Config) -> int:
    query: dict[str, Any] = {"limit": args.lines}
    for key, value in (("worker", args.worker), ("level", args.level), ("trace_id", args.trace)):
        if value is not None:
            query[key] = value

    def show(entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            if args.json:
                sys.stdout.write(orjson.dumps(entry).decode() + "\n")
            else:
                sys.stdout.write(format_entry(entry) + "\n")
        sys.stdout.flush()

    with control_client(args, config) as client:
        answer = client.call("engine::logs::list", query)
        if args.json and not args.follow:
            print_json(answer["entries"])
            return 0
        show(answer["entries"])
        if not args.follow:
            return 0
        cursor = answer["cursor"]
        try:
            while True:  # poll with a cursor: a new line shows within POLL_INTERVAL
                time.sleep(POLL_INTERVAL)
                answer = client.call("engine::logs::list", {**query, "since_id": cursor, "limit": 1000})
                show(answer["entries"])
                cursor = answer["cursor"]
        except KeyboardInterrupt:
            return 0


#: seconds between two polls of ``iii-supervisor logs -f``
POLL_INTERVAL = 0.2


def _add_commands(sub: Any) -> None:
    p = sub.add_parser("logs", help="show recent log entries of the workers (and follow them with -f)")
    p.add_argument("worker", nargs="?", help="only this worker's entries")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new entries as they come")
    p.add_argument("-n", "--lines", type=int, default=100, metavar="N", help="how many recent entries (default 100)")
    p.add_argument("--level", choices=[*LEVELS, "all"], help="this level and above")
    p.add_argument("--trace", metavar="ID", help="only entries of this trace id")
    p.add_argument("--json", action="store_true", help="JSON (one object per line with -f)")
    add_common(p)
    p.set_defaults(func=_cmd_logs)


def _build(ctx: ModuleContext, config: LogConfig) -> LogModule:
    return LogModule(config, ctx.registry, ctx.invoker, ctx.worker_lines)


SPEC = ModuleSpec(name="log", section="log", config_type=LogConfig, build=_build, add_commands=_add_commands)
