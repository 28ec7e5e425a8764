"""The stream module: items in the store, ``stream::*`` built-ins, the client endpoint, triggers.

- Items: ``stream_name › group_id › item_id`` → a JSON value, kept in the embedded store (table
  ``stream_items``) and, decoded, in memory. A write is computed on the trio thread, handed to
  the store and answered after its commit; its change event is emitted after the commit, in
  commit order (a sequence number per write, as the state module does).
- Clients: WebSocket connections (server/ws.py) that ``join`` a group or one item. A change is
  encoded **once** (JSON, then one WebSocket frame) and the same bytes are queued on every
  subscribed connection's :class:`~iii_supervisor.server.ws.FrameSink`; one flusher task writes
  them (one ``writev`` per connection per pass). A connection that stops reading is closed with
  1008 when its buffer is full; it slows nobody.
- Triggers: ``stream`` (every change, filtered), ``stream:join`` (may deny a join),
  ``stream:leave`` (after a leave or a disconnect).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto.utilities import LocalProtocolError

from ...errors import EngineError, InvocationError, ValueTooLarge
from ...invocation import Invoker
from ...registry import Registry, TriggerEntry, TriggerTypeEntry
from ...server.ws import (
    Flusher,
    FrameSink,
    encode_text_frame,
    install_gate,
    open_ws_listeners,
    request_host,
    serve_ws,
)
from ...tracing import call_context, child_traceparent
from ..trigger_feed import offer
from ..update_ops import apply_ops
from .config import StreamConfig
from .logic import (
    BACKEND_PREFIXES,
    ClientError,
    Join,
    Leave,
    StreamFilter,
    SubscriptionIndex,
    auth_request,
    backend_delete_result,
    backend_function,
    backend_missing,
    backend_write_result,
    change_event,
    custom_event,
    denied,
    encode,
    error_event,
    name_arg,
    origin_allowed,
    parse_client_message,
    parse_join_trigger,
    parse_stream_trigger,
    sync_event,
    trigger_payload,
    unauthorized_event,
)

log = logging.getLogger(__name__)

_MISSING: Any = object()

# --- storage: the module's SQL (see docs/store.md) ----------------------------------------------

SCHEMA = [
    """CREATE TABLE stream_items (
           stream TEXT NOT NULL,
           grp TEXT NOT NULL,
           item TEXT NOT NULL,
           value BLOB NOT NULL,
           PRIMARY KEY (stream, grp, item)
       ) WITHOUT ROWID""",
]


def _put(stream: str, group: str, item: str, value: bytes, conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO stream_items (stream, grp, item, value) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (stream, grp, item) DO UPDATE SET value = excluded.value", (stream, group, item, value))


def _delete(stream: str, group: str, item: str, conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM stream_items WHERE stream = ? AND grp = ? AND item = ?", (stream, group, item))


def _load_all(conn: sqlite3.Connection) -> list[tuple[str, str, str, bytes]]:
    return conn.execute("SELECT stream, grp, item, value FROM stream_items").fetchall()


# --- connections and triggers ---------------------------------------------------------------------


@attrs.define(eq=False)
class Client:
    """One WebSocket connection: its subscriptions and its sink (hashable by identity)."""

    conn: WebSocketConnection
    sink: FrameSink
    context: Any
    addr: str
    subs: dict[str, Join] = attrs.Factory(dict)

    def send_event(self, event: dict[str, Any]) -> None:
        self.sink.send(encode_text_frame(encode(event)))


@attrs.define(eq=False)
class _StreamTrigger:
    trigger: TriggerEntry
    filter: StreamFilter
    send: trio.MemorySendChannel[tuple[dict[str, Any], str | None]]
    receive: trio.MemoryReceiveChannel[tuple[dict[str, Any], str | None]]
    cancel: trio.CancelScope = attrs.Factory(trio.CancelScope)
    dropped: int = 0
    last_drop_log: float = -math.inf


@attrs.define(eq=False)
class _ItemLock:
    lock: trio.Lock = attrs.Factory(trio.Lock)
    users: int = 0


class _JoinTriggers:
    """The provider of ``stream:join`` or ``stream:leave``: bindings in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.bindings: dict[str, tuple[TriggerEntry, str | None]] = {}

    def register(self, trigger: TriggerEntry) -> None:
        self.bindings[trigger.id] = (trigger, parse_join_trigger(self.kind, trigger.id, trigger.config))

    def unregister(self, trigger: TriggerEntry) -> None:
        self.bindings.pop(trigger.id, None)


class StreamModule:
    def __init__(self, config: StreamConfig, registry: Registry, invoker: Invoker, store: Any) -> None:
        if store is None:
            raise EngineError("the stream module needs the embedded store (ModuleSpec.uses_store)",
                              code="config_error")
        self.config = config
        self.registry = registry
        self.invoker = invoker
        self.store = store
        #: stream → group → item → value
        self.data: dict[str, dict[str, dict[str, Any]]] = {}
        self.index = SubscriptionIndex()
        self.clients: set[Client] = set()
        self.flusher = Flusher()
        self.port: int | None = None
        self.slow_closed = 0
        self._versions: dict[tuple[str, str, str], int] = {}
        self._seq = 0
        self._emit_next = 0
        self._done: dict[int, tuple[dict[str, Any], str | None] | None] = {}
        self._stream_triggers: dict[str, _StreamTrigger] = {}
        self._joins = _JoinTriggers("stream:join")
        self._leaves = _JoinTriggers("stream:leave")
        self._leave_send, self._leave_receive = trio.open_memory_channel[dict[str, Any]](config.trigger_buffer)
        self._leaves_dropped = 0
        self._nursery: trio.Nursery | None = None
        #: streams a worker's ``stream::<verb>(<name>)`` functions serve (seen registered once:
        #: from then on never served from the store), plus ``custom_backends`` of the config
        self._custom: set[str] = set(config.custom_backends)
        #: per item, while a write through a custom backend is under way (update = get + set)
        self._item_locks: dict[tuple[str, str, str], _ItemLock] = {}

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await open_ws_listeners(self.config.host, self.config.port)  # a busy port fails here, plainly
        try:
            await self.store.migrate("stream", SCHEMA)
            for stream, group, item, raw in await self.store.read(_load_all):
                self.data.setdefault(stream, {}).setdefault(group, {})[item] = orjson.loads(raw)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.registry.add_trigger_type(TriggerTypeEntry(
                    "stream", "After a stream change: {stream_name?, group_id?, item_id?, condition_function_id?}",
                    self))
                self.registry.add_trigger_type(TriggerTypeEntry(
                    "stream:join", "A client joins a stream subscription (may deny: {unauthorized: true})",
                    self._joins))
                self.registry.add_trigger_type(TriggerTypeEntry(
                    "stream:leave", "A client left a subscription (or disconnected)", self._leaves))
                for name, handler, description in (
                    ("set", self._set, "Set an item: {stream_name, group_id, item_id, data} → {old_value, new_value}"),
                    ("get", self._get, "An item or null: {stream_name, group_id, item_id}"),
                    ("delete", self._delete, "Delete an item: {stream_name, group_id, item_id} → {old_value}"),
                    ("update", self._update,
                     "Apply update ops atomically: {stream_name, group_id, item_id, ops} → {old_value, new_value}"),
                    ("list", self._list, "The items of a group: {stream_name, group_id}"),
                    ("list_groups", self._list_groups, "The groups of a stream: {stream_name}"),
                    ("list_all", self._list_all, "Every stream and its groups: {} → {stream: [{id, groups}], count}"),
                    ("send", self._send, "An ephemeral event to a group's subscribers: "
                                         "{stream_name, group_id, id?, type, data}"),
                ):
                    self.registry.add_builtin(f"stream::{name}", handler, description)
                self.registry.add_builtin("engine::streams::stats", self._stats,
                                          "The stream endpoint: connections, subscriptions, bytes queued, slow closes")
                await nursery.start(self.flusher.run)
                nursery.start_soon(self._run_leaves)
                for sub in self._stream_triggers.values():
                    nursery.start_soon(self._deliver, sub)
                self.port = await nursery.start(partial(
                    serve_ws, self._connection, listeners,
                    max_message_size=self.config.max_message_size, max_connections=self.config.max_connections,
                    handshake_timeout=self.config.handshake_timeout))
                task_status.started(self.port)
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None
        finally:
            for listener in listeners:  # (serve_ws closes them too; idempotent)
                await trio.aclose_forcefully(listener)


    # --- built-ins ------------------------------------------------------------------------------

    @staticmethod
    def _address(data: Any, function: str) -> tuple[str, str, str]:
        stream = name_arg(data, "stream_name", function)
        group = name_arg(data, "group_id", function)
        item = name_arg(data, "item_id", function)
        assert stream is not None and group is not None and item is not None
        return stream, group, item

    async def _set(self, data: Any) -> dict[str, Any]:
        stream, group, item = self._address(data, "stream::set")
        if "data" in data:
            value = data["data"]
        elif "value" in data:
            value = data["value"]
        else:
            raise InvocationError('stream::set needs {"stream_name", "group_id", "item_id", "data"}: '
                                  '"data" is missing', code="invalid_argument")
        backend = self._backend(stream, "set")
        if backend is not None:
            self._check_size(stream, group, item, value)
            async with self._item_lock(stream, group, item):
                old, new = backend_write_result(backend, "set", await self._call_backend(
                    backend, {"stream_name": stream, "group_id": group, "item_id": item, "data": value}))
                self._emit(change_event(stream, group, item, "create" if old is None else "update", new))
            return {"old_value": old, "new_value": new}
        old = await self._write(stream, group, item, lambda _old: value)
        return {"old_value": None if old is _MISSING else old, "new_value": value}

    async def _update(self, data: Any) -> dict[str, Any]:
        stream, group, item = self._address(data, "stream::update")
        ops = data.get("ops")
        if self._is_custom(stream):
            return await self._update_backend(stream, group, item, ops)
        new: list[Any] = []

        def change(old: Any) -> Any:
            new.append(apply_ops(None if old is _MISSING else old, ops))  # raises before anything changes
            return new[0]

        old = await self._write(stream, group, item, change)
        return {"old_value": None if old is _MISSING else old, "new_value": new[0]}

    async def _delete(self, data: Any) -> dict[str, Any]:
        stream, group, item = self._address(data, "stream::delete")
        backend = self._backend(stream, "delete")
        if backend is not None:
            async with self._item_lock(stream, group, item):
                old = backend_delete_result(backend, await self._call_backend(
                    backend, {"stream_name": stream, "group_id": group, "item_id": item}))
                if old is not None:
                    self._emit(change_event(stream, group, item, "delete", old))
            return {"old_value": old}
        old = await self._write(stream, group, item, None)
        return {"old_value": None if old is _MISSING else old}

    async def _get(self, data: Any) -> Any:
        stream, group, item = self._address(data, "stream::get")
        backend = self._backend(stream, "get")
        if backend is not None:
            return await self._call_backend(backend, {"stream_name": stream, "group_id": group, "item_id": item})
        return self.data.get(stream, {}).get(group, {}).get(item)

    async def _list(self, data: Any) -> list[Any]:
        stream = name_arg(data, "stream_name", "stream::list")
        group = name_arg(data, "group_id", "stream::list")
        assert stream is not None and group is not None
        backend = self._backend(stream, "list")
        if backend is not None:
            return await self._call_backend(backend, {"stream_name": stream, "group_id": group})  # type: ignore[no-any-return]
        return self._group_items(stream, group)

    def _group_items(self, stream: str, group: str) -> list[Any]:
        items = self.data.get(stream, {}).get(group, {})
        return [items[k] for k in sorted(items)]

    async def _list_groups(self, data: Any) -> list[str]:
        stream = name_arg(data, "stream_name", "stream::list_groups")
        assert stream is not None
        backend = self._backend(stream, "list_groups")
        if backend is not None:
            return await self._call_backend(backend, {"stream_name": stream})  # type: ignore[no-any-return]
        return sorted(g for g, items in self.data.get(stream, {}).items() if items)

    async def _list_all(self, _data: Any) -> dict[str, Any]:
        streams = [{"id": name, "groups": sorted(g for g, items in groups.items() if items)}
                   for name, groups in sorted(self.data.items())]
        streams = [s for s in streams if s["groups"]]
        return {"stream": streams, "count": len(streams)}

    async def _send(self, data: Any) -> None:
        stream = name_arg(data, "stream_name", "stream::send")
        group = name_arg(data, "group_id", "stream::send")
        item = name_arg(data, "id", "stream::send", required=False)
        name = name_arg(data, "type", "stream::send")
        assert stream is not None and group is not None and name is not None
        event = custom_event(stream, group, item, name, data.get("data"))
        size = len(orjson.dumps(event))
        if size > self.config.max_value_size:
            raise ValueTooLarge(f"stream::send event for {stream!r}/{group!r} is {size} bytes of JSON, over the "
                                f"limit of {self.config.max_value_size} (stream.max_value_size)")
        self._emit(event)
        return None

    def _emit(self, event: dict[str, Any]) -> None:
        """Emit an event that no store write carries (``stream::send``, a custom backend's change),
        after the events of every write before it."""
        seq, self._seq = self._seq, self._seq + 1
        self._committed(seq, (event, call_context().traceparent))

    async def _stats(self, _data: Any) -> dict[str, Any]:
        return {"port": self.port, "connections": len(self.clients),
                "subscriptions": sum(len(c.subs) for c in self.clients),
                "buffered_bytes": sum(c.sink.buffer.size for c in self.clients),
                "max_buffered_bytes": max((c.sink.buffer.size for c in self.clients), default=0),
                "slow_closed": self.slow_closed, "flush_passes": self.flusher.passes}

    # --- custom backends ----------------------------------------------------------------------------

    def _is_custom(self, stream: str) -> bool:
        """Whether a worker's functions serve ``stream`` (or did: it stays custom once seen)."""
        if stream in self._custom:
            return True
        functions, suffix = self.registry.functions, f"({stream})"
        for prefix in BACKEND_PREFIXES:  # (~1 µs per call on a plain stream; a stream::set costs ~100x more)
            if prefix + suffix in functions:
                self._custom.add(stream)
                return True
        return False

    def _backend(self, stream: str, verb: str) -> str | None:
        """The function serving ``verb`` for ``stream``, or None for the store. A custom stream
        whose backend does not serve ``verb`` (now) is refused: falling back to the store would
        serve other data than the backend holds."""
        if not self._is_custom(stream):
            return None
        function_id = backend_function(verb, stream)
        if self.registry.lookup(function_id) is None:
            raise backend_missing(stream, function_id)
        return function_id

    async def _call_backend(self, function_id: str, payload: dict[str, Any]) -> Any:
        return await self.invoker.call(function_id, payload, traceparent=call_context().traceparent)

    async def _update_backend(self, stream: str, group: str, item: str, ops: Any) -> dict[str, Any]:
        """``stream::update`` of a custom stream: its own ``stream::update(<name>)`` if it has one,
        else get, apply the ops here, set — under the item's lock, so atomic with respect to every
        write made through these functions (not to writes the backend gets by other ways)."""
        address = {"stream_name": stream, "group_id": group, "item_id": item}
        own = backend_function("update", stream)
        async with self._item_lock(stream, group, item):
            if self.registry.lookup(own) is not None:
                old, new = backend_write_result(own, "update", await self._call_backend(own, {**address, "ops": ops}))
            else:
                getter, setter = self._backend(stream, "get"), self._backend(stream, "set")
                assert getter is not None and setter is not None
                old = await self._call_backend(getter, address)
                value = apply_ops(old, ops)  # raises before anything changes
                self._check_size(stream, group, item, value)
                _, new = backend_write_result(setter, "set", await self._call_backend(
                    setter, {**address, "data": value}))
            self._emit(change_event(stream, group, item, "create" if old is None else "update", new))
        return {"old_value": old, "new_value": new}

    @asynccontextmanager
    async def _item_lock(self, stream: str, group: str, item: str) -> AsyncIterator[None]:
        key = (stream, group, item)
        entry = self._item_locks.get(key)
        if entry is None:
            entry = self._item_locks[key] = _ItemLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._item_locks[key]

    def _check_size(self, stream: str, group: str, item: str, value: Any) -> None:
        size = len(orjson.dumps(value))
        if size > self.config.max_value_size:
            raise ValueTooLarge(f"item {stream!r}/{group!r}/{item!r} is {size} bytes of JSON, over the limit of "
                                f"{self.config.max_value_size} (stream.max_value_size)")

    # --- the write path ---------------------------------------------------------------------------

    async def _write(self, stream: str, group: str, item: str, change: Any) -> Any:
        """Set the item to ``change(old)`` (None: delete); the old value (``_MISSING``) once durable.
        Nothing awaits between reading ``old`` and setting the new value."""
        groups = self.data.get(stream, {})
        items = groups.get(group)
        old = items.get(item, _MISSING) if items is not None else _MISSING
        if change is None:
            new, op = _MISSING, partial(_delete, stream, group, item)
        else:
            new = change(old)
            encoded = orjson.dumps(new)
            if len(encoded) > self.config.max_value_size:
                raise ValueTooLarge(f"item {stream!r}/{group!r}/{item!r} is {len(encoded)} bytes of JSON, over the "
                                    f"limit of {self.config.max_value_size} (stream.max_value_size)")
            op = partial(_put, stream, group, item, encoded)
        self._apply(stream, group, item, new)
        key = (stream, group, item)
        version = self._versions[key] = self._versions.get(key, 0) + 1
        seq, self._seq = self._seq, self._seq + 1
        event: tuple[dict[str, Any], str | None] | None = None
        if not (old is _MISSING and new is _MISSING):
            kind = "delete" if new is _MISSING else "create" if old is _MISSING else "update"
            event = (change_event(stream, group, item, kind, old if new is _MISSING else new),
                     call_context().traceparent)
        try:
            with trio.CancelScope(shield=True):  # the write is made anyway: wait for it, then emit in order
                try:
                    await self.store.write(op)
                except EngineError:  # not made (disk full …): undo it in memory unless written since
                    event = None
                    if self._versions.get(key) == version:
                        self._apply(stream, group, item, old)
                    raise
        finally:
            if self._versions.get(key) == version:
                del self._versions[key]
            self._committed(seq, event)
        return old

    def _apply(self, stream: str, group: str, item: str, value: Any) -> None:
        if value is _MISSING:
            groups = self.data.get(stream)
            items = groups.get(group) if groups is not None else None
            if items is not None:
                items.pop(item, None)
                if not items:
                    del groups[group]  # type: ignore[union-attr]
                    if not groups:
                        del self.data[stream]
        else:
            self.data.setdefault(stream, {}).setdefault(group, {})[item] = value

    def _committed(self, seq: int, event: tuple[dict[str, Any], str | None] | None) -> None:
        """Write ``seq`` is done: emit the events of every write up to the first still open."""
        self._done[seq] = event
        while self._emit_next in self._done:
            ready = self._done.pop(self._emit_next)
            self._emit_next += 1
            if ready is not None:
                self._fan_out(*ready)

    def _fan_out(self, event: dict[str, Any], traceparent: str | None) -> None:
        targets = self.index.targets(event["streamName"], event["groupId"], event.get("id"))
        if targets:
            try:
                frame = encode_text_frame(encode(event))  # once, for every subscriber
            except TypeError as exc:  # a custom backend's answer nested deeper than orjson encodes
                log.warning("stream %r/%r: a %s event cannot be encoded as JSON (%s): not sent to its "
                            "subscribers", event["streamName"], event["groupId"], event.get("event", {}).get("type"),
                            exc)
            else:
                for client in targets:
                    client.sink.send(frame)  # type: ignore[attr-defined]
        for sub in self._stream_triggers.values():
            if not sub.filter.matches(event):
                continue
            offer(sub, (event, traceparent), what="events", buffer=self.config.trigger_buffer, log=log)

    # --- `stream` triggers (TriggerProvider) --------------------------------------------------------

    def register(self, trigger: TriggerEntry) -> None:
        flt = parse_stream_trigger(trigger.id, trigger.config)
        send, receive = trio.open_memory_channel[tuple[dict[str, Any], str | None]](self.config.trigger_buffer)
        sub = _StreamTrigger(trigger, flt, send, receive)
        self._stream_triggers[trigger.id] = sub
        if self._nursery is not None:
            self._nursery.start_soon(self._deliver, sub)

    def unregister(self, trigger: TriggerEntry) -> None:
        sub = self._stream_triggers.pop(trigger.id, None)
        if sub is not None:
            sub.cancel.cancel()
            sub.send.close()

    async def _deliver(self, sub: _StreamTrigger) -> None:
        with sub.cancel:
            async for event, traceparent in sub.receive:
                step = sub.filter.condition
                try:
                    tp = child_traceparent(traceparent)
                    if step is not None and not await self.invoker.call(step, event, traceparent=tp):
                        continue
                    step = sub.trigger.function_id
                    await self.invoker.call(step, event, traceparent=tp)
                except EngineError as exc:
                    log.warning("stream trigger %s: %s failed on %s of %r/%r: %s", sub.trigger.id, step,
                                event["event"]["type"], event["streamName"], event["groupId"], exc)

    # --- the client endpoint ------------------------------------------------------------------------

    async def _connection(self, request: WebSocketRequest, stream: trio.SocketStream) -> None:
        headers = request.headers
        origin = next((v.decode("latin-1") for k, v in headers if k.lower() == b"origin"), None)
        try:
            peer = stream.socket.getpeername()
            addr = f"{peer[0]}:{peer[1]}"
        except OSError:
            addr = "?"
        host = request_host(request)
        if not origin_allowed(origin, self.config.allowed_origins, host):
            log.info("stream endpoint: refused an upgrade from %s: origin %r is not allowed "
                     "(stream.allowed_origins)", addr, origin)
            await request.reject(403, body=f"origin {origin!r} is not allowed".encode())
            return
        context = None
        if self.config.auth_function_id is not None:
            status, context = await self._authenticate(request, addr)
            if status is not None:
                await request.reject(status, body=b"unauthorized" if status == 401 else
                                     b"forbidden" if status == 403 else b"authentication unavailable")
                return
        gate = install_gate(request)
        conn = await request.accept()
        sink = FrameSink(conn, gate, self.flusher, limit=self.config.send_buffer_bytes,
                         close_timeout=self.config.close_timeout, on_close=partial(self._closing, addr))
        client = Client(conn, sink, context, addr)
        self.clients.add(client)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(client.sink.run)
                nursery.start_soon(self._keepalive, client)
                try:
                    while True:
                        message = await conn.get_message()
                        await self._on_message(client, message)
                except ConnectionClosed:
                    pass
                finally:
                    self._drop(client)
                await self._finish(client)
                nursery.cancel_scope.cancel()
        finally:
            self.clients.discard(client)
            client.sink._cut()

    async def _authenticate(self, request: WebSocketRequest, addr: str) -> tuple[int | None, Any]:
        """(None, context) to accept; (status, None) to refuse."""
        assert self.config.auth_function_id is not None
        host = request_host(request)
        headers = [(b"host", host.encode()), *request.headers] if host is not None else request.headers
        payload = auth_request(headers, request.path, addr)
        try:
            result = await self.invoker.call(self.config.auth_function_id, payload,
                                             timeout=self.config.handler_timeout_ms / 1000)
        except InvocationError as exc:
            if exc.code == "invocation_failed":  # the auth function said no by raising
                log.info("stream endpoint: auth refused %s: %s", addr, exc.message)
                return 401, None
            log.warning("stream endpoint: auth function %s failed for %s: %s", self.config.auth_function_id,
                        addr, exc)
            return 503, None
        if isinstance(result, dict) and result.get("forbidden") is True:
            return 403, None
        if not result or denied(result):
            return 401, None
        return None, result.get("context") if isinstance(result, dict) else None

    async def _finish(self, client: Client) -> None:
        """End the connection: our close (if we started one) completes in the sink's writer;
        otherwise close normally, and cut the socket if the client does not answer in time."""
        conn, sink = client.conn, client.sink
        if sink.closing is not None:
            with trio.move_on_after(3 * self.config.close_timeout):
                await sink.cut.wait()
            return
        with trio.move_on_after(self.config.close_timeout):
            await conn.aclose()
        if conn._reader_running:  # (trio-websocket stops reading after its own 1009 close: no answer comes)
            with trio.move_on_after(self.config.close_timeout):
                await conn._close_handshake.wait()

    async def _keepalive(self, client: Client) -> None:
        while True:
            await trio.sleep(self.config.ping_interval)
            with trio.move_on_after(self.config.ping_timeout) as scope:
                try:
                    await client.conn.ping()
                except (ConnectionClosed, LocalProtocolError, ValueError):
                    return
            if scope.cancelled_caught:
                log.info("stream endpoint: %s sent no pong within %.1fs: closing it", client.addr,
                         self.config.ping_timeout)
                client.sink.close(1001, "no pong within ping_timeout")
                return

    async def _on_message(self, client: Client, raw: str | bytes) -> None:
        try:
            msg = parse_client_message(raw)
        except ClientError as exc:
            client.send_event(error_event(exc.code, exc.message, exc.subscription_id))
            return
        if isinstance(msg, Leave):
            join = client.subs.pop(msg.subscription_id, None)
            if join is None:
                client.send_event(error_event("unknown_subscription", f"leave: no subscription "
                                              f"{msg.subscription_id!r} on this connection", msg.subscription_id))
                return
            self.index.remove(client, join)
            self._queue_leave(client, join)
            return
        join = msg
        if join.subscription_id in client.subs:
            client.send_event(error_event("duplicate_subscription", f"join: subscription {join.subscription_id!r} "
                                          "is already open on this connection", join.subscription_id))
            return
        if len(client.subs) >= self.config.max_subscriptions:
            client.send_event(error_event(
                "too_many_subscriptions", f"join {join.subscription_id!r}: this connection already holds "
                f"{len(client.subs)} subscriptions (stream.max_subscriptions)", join.subscription_id))
            return
        if not await self._join_allowed(client, join):
            client.send_event(unauthorized_event(join))
            return
        if client.sink.closing is not None or client.sink.dead:
            return
        # subscribe and take the snapshot with no await in between: no change is missed
        client.subs[join.subscription_id] = join
        self.index.add(client, join)
        if self._is_custom(join.stream_name):
            await self._sync_from_backend(client, join)
            return
        if join.item_id is None:
            data: Any = self._group_items(join.stream_name, join.group_id)
        else:
            data = self.data.get(join.stream_name, {}).get(join.group_id, {}).get(join.item_id)
        client.send_event(sync_event(join, data))

    async def _sync_from_backend(self, client: Client, join: Join) -> None:
        """The snapshot of a custom stream comes from its backend, read after the subscription
        opened: a change made during the read may reach the client just before the sync."""
        address = {"stream_name": join.stream_name, "group_id": join.group_id}
        try:
            if join.item_id is None:
                backend = self._backend(join.stream_name, "list")
            else:
                backend, address["item_id"] = self._backend(join.stream_name, "get"), join.item_id
            assert backend is not None
            data = await self.invoker.call(backend, address, timeout=self.config.handler_timeout_ms / 1000)
        except EngineError as exc:
            if client.subs.pop(join.subscription_id, None) is not None:
                self.index.remove(client, join)
            log.warning("stream endpoint: join %r of %s: no snapshot from the custom backend: %s",
                        join.subscription_id, client.addr, exc)
            client.send_event(error_event("sync_failed", f"join {join.subscription_id!r}: the custom backend of "
                                          f"stream {join.stream_name!r} gave no snapshot: {exc}",
                                          join.subscription_id))
            return
        if client.subs.get(join.subscription_id) is join:
            client.send_event(sync_event(join, data))

    async def _join_allowed(self, client: Client, join: Join) -> bool:
        """Every ``stream:join`` binding in turn; one answering ``{"unauthorized": true}`` (or
        failing: fail closed) denies."""
        payload = trigger_payload(join, client.context)
        timeout = self.config.handler_timeout_ms / 1000
        for trigger, condition in list(self._joins.bindings.values()):
            step = condition
            try:
                if condition is not None and not await self.invoker.call(condition, payload, timeout=timeout):
                    continue
                step = trigger.function_id
                result = await self.invoker.call(trigger.function_id, payload, timeout=timeout)
            except EngineError as exc:
                log.warning("stream:join %s: %s failed on %r/%r, join denied: %s", trigger.id, step,
                            join.stream_name, join.group_id, exc)
                return False
            if denied(result):
                return False
        return True

    def _closing(self, addr: str, code: int, reason: str) -> None:
        if code == 1008:
            self.slow_closed += 1
        log.warning("stream endpoint: closing %s with %d: %s", addr, code, reason)

    def _drop(self, client: Client) -> None:
        """The connection is over: every subscription leaves (``stream:leave`` runs for each)."""
        for join in client.subs.values():
            self.index.remove(client, join)
            self._queue_leave(client, join)
        client.subs.clear()

    def _queue_leave(self, client: Client, join: Join) -> None:
        if not self._leaves.bindings:
            return
        try:
            self._leave_send.send_nowait(trigger_payload(join, client.context))
        except trio.WouldBlock:
            self._leaves_dropped += 1
            if self._leaves_dropped in (1, 10, 100) or self._leaves_dropped % 1000 == 0:
                log.warning("stream:leave handlers are not keeping up: %d leave events dropped",
                            self._leaves_dropped)

    async def _run_leaves(self) -> None:
        timeout = self.config.handler_timeout_ms / 1000
        async for payload in self._leave_receive:
            for trigger, condition in list(self._leaves.bindings.values()):
                try:
                    if condition is not None and not await self.invoker.call(condition, payload,
                                                                             timeout=timeout):
                        continue
                    await self.invoker.call(trigger.function_id, payload, timeout=timeout)
                except EngineError as exc:
                    log.warning("stream:leave %s: %s failed: %s", trigger.id, trigger.function_id, exc)
