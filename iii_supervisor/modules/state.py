"""The state module: a durable key-value store of JSON values, and ``state`` triggers.

Built-in functions (the reference engine's shapes):

- ``state::set {scope, key, value}`` ⇒ ``{old_value, new_value}`` (``data`` is accepted for ``value``)
- ``state::get {scope, key}`` ⇒ the value, or null
- ``state::delete {scope, key}`` ⇒ the deleted value, or null
- ``state::update {scope, key, ops}`` ⇒ ``{old_value, new_value}`` (ops: modules/update_ops.py)
- ``state::list {scope}`` ⇒ the scope's values, by key (``include_keys: true``: ``[{key, value}]``)
- ``state::list_groups {}`` ⇒ ``{groups: [scopes, sorted], counts: {scope: keys}}``

How a write works. Values live in the embedded store (table ``state_items``) and, decoded, in
memory. A write is computed on the trio thread against the in-memory value — so ``update`` is
atomic without locks: nothing else runs between reading the old value and setting the new one —
then handed to the store (the writes of one scheduler pass as one store op), and acknowledged
once its transaction has committed (group commit: many writes share one). Reads are served from
memory without waiting for the writer; a read may therefore see a write whose commit is still
under way (for at most one group commit), but a write is acknowledged only once it is durable.
The store commits writes in the order they were submitted; events are emitted in that order too
(a sequence number per write), so the triggers of one key see its changes in commit order. A
write that fails in the store (disk full) is undone in memory from the store's committed data.

``state`` triggers (``config: {scope?, key?, condition_function_id?}``) get ``{type: "state",
event_type: "created" | "updated" | "deleted", scope, key, old_value, new_value}`` after the
commit; a write that leaves the value as it was fires nothing. Each trigger has a bounded buffer
and one task that calls its condition, then its function, event after event; a trigger whose
handler cannot keep up loses events (counted and logged), writers never wait for handlers.
"""

from __future__ import annotations

import argparse
import logging
import math
import sqlite3
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import orjson
import trio

from ..clitools import add_common, control_client, print_json, table
from ..config import Config, positive
from ..errors import (
    EngineError,
    InvocationError,
    ValueTooLarge,
)
from ..invocation import Invoker
from ..registry import Registry, TriggerEntry, TriggerTypeEntry
from ..tracing import call_context, child_traceparent
from ..trigger_config import known_keys, optional_strings
from ..trigger_config import short as _short
from .base import ModuleContext, ModuleSpec
from .trigger_feed import offer
from .update_ops import apply_ops

log = logging.getLogger(__name__)

_MISSING: Any = object()
MAX_NAME = 1024

# --- storage: the module's SQL, in one place (see docs/store.md) ---------------------------------

SCHEMA = [
    """CREATE TABLE state_items (
           scope TEXT NOT NULL,
           key TEXT NOT NULL,
           value BLOB NOT NULL,
           PRIMARY KEY (scope, key)
       ) WITHOUT ROWID""",
]


def _apply(rows: list[tuple[str, str, bytes | None]], conn: sqlite3.Connection) -> None:
    """Write a batch of ``(scope, key, value or None to delete)``, in order: only each key's
    last row matters (they commit together)."""
    last = {(scope, key): value for scope, key, value in rows}
    puts = [(scope, key, value) for (scope, key), value in last.items() if value is not None]
    deletes = [(scope, key) for (scope, key), value in last.items() if value is None]
    if puts:
        conn.executemany("INSERT INTO state_items (scope, key, value) VALUES (?, ?, ?) "
                         "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value", puts)
    if deletes:
        conn.executemany("DELETE FROM state_items WHERE scope = ? AND key = ?", deletes)


def _load_all(conn: sqlite3.Connection) -> list[tuple[str, str, bytes]]:
    return conn.execute("SELECT scope, key, value FROM state_items").fetchall()


def _load_one(scope: str, key: str, conn: sqlite3.Connection) -> bytes | None:
    row = conn.execute("SELECT value FROM state_items WHERE scope = ? AND key = ?", (scope, key)).fetchone()
    return row[0] if row else None


def _nothing(_conn: sqlite3.Connection) -> None:
    return None


# --- config -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StateConfig:
    #: Largest value accepted, in bytes of JSON; larger ones are refused with VALUE_TOO_LARGE.
    max_value_size: int = attrs.field(default=1024 * 1024, validator=positive)
    #: Events queued for one ``state`` trigger whose handler is busy; beyond this they are dropped.
    trigger_buffer: int = attrs.field(default=10_000, validator=positive)


@attrs.define(eq=False)
class _Batch:
    """The writes made during one pass of the scheduler: one store op for all of them."""

    rows: list[tuple[str, str, bytes | None]] = attrs.Factory(list)
    #: per row: (write sequence number, its event or None, key version)
    writes: list[tuple[int, tuple[dict[str, Any], str | None, str | None] | None, int]] = attrs.Factory(list)
    done: trio.Event = attrs.Factory(trio.Event)
    error: EngineError | None = None


@attrs.define(eq=False)
class _Subscription:
    trigger: TriggerEntry
    scope_filter: str | None
    key_filter: str | None
    condition: str | None
    send: trio.MemorySendChannel[tuple[dict[str, Any], str | None, str | None]]
    receive: trio.MemoryReceiveChannel[tuple[dict[str, Any], str | None, str | None]]
    cancel: trio.CancelScope = attrs.Factory(trio.CancelScope)
    delivered: int = 0
    dropped: int = 0
    last_drop_log: float = -math.inf

    def matches(self, scope: str, key: str) -> bool:
        return (self.scope_filter is None or self.scope_filter == scope) and (
            self.key_filter is None or self.key_filter == key)


def _same(old: Any, new: Any) -> bool:
    """The same JSON value (``1`` and ``1.0`` and ``true`` differ; key order does not matter)."""
    if old is _MISSING or old != new:
        return False
    opt = orjson.OPT_SORT_KEYS
    return orjson.dumps(old, option=opt) == orjson.dumps(new, option=opt)


class StateModule:
    def __init__(self, config: StateConfig, registry: Registry, invoker: Invoker, store: Any) -> None:
        if store is None:
            raise EngineError("the state module needs the embedded store (ModuleSpec.uses_store)", code="config_error")
        self.config = config
        self.registry = registry
        self.invoker = invoker
        self.store = store
        self.data: dict[str, dict[str, Any]] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self._seq = 0
        self._emit_next = 0
        self._done: dict[int, tuple[dict[str, Any], str | None, str | None] | None] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._nursery: trio.Nursery | None = None
        self._batch: _Batch | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.store.migrate("state", SCHEMA)
        for scope, key, raw in await self.store.read(_load_all):
            self.data.setdefault(scope, {})[key] = orjson.loads(raw)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.registry.add_trigger_type(TriggerTypeEntry(
                "state", "After a state write: {scope?, key?, condition_function_id?}", self))
            for name, handler, description in (
                ("set", self._set, "Set a value: {scope, key, value} → {old_value, new_value}"),
                ("get", self._get, "A value or null: {scope, key}"),
                ("delete", self._delete, "Delete a value: {scope, key} → the old value or null"),
                ("update", self._update, "Apply update ops atomically: {scope, key, ops} → {old_value, new_value}"),
                ("list", self._list, "The values of a scope: {scope, include_keys?}"),
                ("list_groups", self._list_groups, "The scopes that hold values: {} → {groups}"),
            ):
                self.registry.add_builtin(f"state::{name}", handler, description)
            for sub in self._subscriptions.values():
                nursery.start_soon(self._deliver, sub)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # --- built-ins ------------------------------------------------------------------------------

    async def _set(self, data: Any) -> dict[str, Any]:
        scope, key = _address(data, "state::set")
        if "value" in data:
            value = data["value"]
        elif "data" in data:
            value = data["data"]
        else:
            raise InvocationError('state::set needs {"scope", "key", "value"}: "value" is missing',
                                  code="invalid_argument")
        old = await self._write(scope, key, lambda _old: value)
        return {"old_value": None if old is _MISSING else old, "new_value": value}

    async def _update(self, data: Any) -> dict[str, Any]:
        scope, key = _address(data, "state::update")
        ops = data.get("ops")
        new: list[Any] = []

        def change(old: Any) -> Any:
            new.append(apply_ops(None if old is _MISSING else old, ops))  # raises before anything changes
            return new[0]

        old = await self._write(scope, key, change)
        return {"old_value": None if old is _MISSING else old, "new_value": new[0]}

    async def _delete(self, data: Any) -> Any:
        scope, key = _address(data, "state::delete")
        old = await self._write(scope, key, None)
        return None if old is _MISSING else old

    async def _get(self, data: Any) -> Any:
        scope, key = _address(data, "state::get")
        return self.data.get(scope, {}).get(key)

    async def _list(self, data: Any) -> list[Any]:
        if not isinstance(data, dict) or not isinstance(data.get("scope"), str):
            raise InvocationError(f'state::list needs {{"scope": "<scope>"}}, got {_short(data)}',
                                  code="invalid_argument")
        items = sorted(self.data.get(data["scope"], {}).items())
        if data.get("include_keys"):
            return [{"key": k, "value": v} for k, v in items]
        return [v for _k, v in items]

    async def _list_groups(self, _data: Any) -> dict[str, Any]:
        groups = sorted(scope for scope, items in self.data.items() if items)
        return {"groups": groups, "counts": {scope: len(self.data[scope]) for scope in groups}}

    # --- the write path ---------------------------------------------------------------------------

    async def _write(self, scope: str, key: str, change: Callable[[Any], Any] | None) -> Any:
        """Set ``scope/key`` to ``change(old)`` (``change=None``: delete); returns the old value
        (``_MISSING`` if none) once the write is durable. Nothing between reading ``old`` and
        setting the new value awaits, so concurrent writes of one key cannot interleave."""
        items = self.data.get(scope)
        old = items.get(key, _MISSING) if items is not None else _MISSING
        encoded: bytes | None = None
        if change is None:
            new = _MISSING
        else:
            new = change(old)
            try:
                encoded = orjson.dumps(new)
            except TypeError as exc:  # (orjson: nested deeper than 254 levels)
                raise InvocationError(f"value for {scope!r}/{key!r} cannot be stored as JSON: {exc}",
                                      code="invalid_argument") from None
            if len(encoded) > self.config.max_value_size:
                raise ValueTooLarge(f"value for {scope!r}/{key!r} is {len(encoded)} bytes of JSON, over the limit "
                                    f"of {self.config.max_value_size} (state.max_value_size)")
        if new is _MISSING:
            if items is not None:
                items.pop(key, None)
                if not items:
                    del self.data[scope]
        else:
            self.data.setdefault(scope, {})[key] = new
        version = self._versions[(scope, key)] = self._versions.get((scope, key), 0) + 1
        seq, self._seq = self._seq, self._seq + 1
        event = self._event(scope, key, old, new)
        batch = self._batch
        if batch is None:
            assert self._nursery is not None, "StateModule.run is not running"
            batch = self._batch = _Batch()
            self._nursery.start_soon(self._flush, batch)
        batch.rows.append((scope, key, encoded))
        batch.writes.append((seq, event, version))
        await batch.done.wait()  # (a cancelled caller leaves the write to the batch: made, event emitted)
        if batch.error is not None:  # the store failed (disk full …): the write was not made
            raise type(batch.error)(batch.error.message, code=batch.error.code)
        return old

    async def _flush(self, batch: _Batch) -> None:
        """Hand ``batch`` to the store once the writers of this scheduler pass have joined it.

        Batches are submitted in the order they were opened (a batch opens only once the one
        before was submitted), and the store commits in submission order: write order is commit
        order. One store op per batch instead of one per write: the store's per-op costs (a
        queue put that wakes its thread, a wake-up per caller) are paid once."""
        try:
            await trio.lowlevel.checkpoint()
            if self._batch is batch:
                self._batch = None
            await self.store.write(partial(_apply, batch.rows))
        except EngineError as exc:
            batch.error = exc
            for (scope, key, _value), (_seq, _event, version) in zip(batch.rows, batch.writes, strict=True):
                await self._resync(scope, key, version)
        except BaseException as exc:  # (cancelled at shutdown: its writers must not wait forever)
            if self._batch is batch:
                self._batch = None
            batch.error = EngineError(f"state write not made: {exc!r}", code="store_error")
            raise
        finally:
            for (scope, key, _value), (seq, event, version) in zip(batch.rows, batch.writes, strict=True):
                if self._versions.get((scope, key)) == version:
                    del self._versions[(scope, key)]
                self._committed(seq, event if batch.error is None else None)  # events in write order
            batch.done.set()

    async def _resync(self, scope: str, key: str, version: int) -> None:
        """A write failed in the store: take the key's value back from what is committed, unless a
        later write of the key has set it since."""
        try:
            await self.store.write(_nothing)  # every write submitted before it is done after it
            raw = await self.store.read(partial(_load_one, scope, key))
        except EngineError:
            log.exception("state %r/%r: cannot read back the value after a failed write", scope, key)
            return
        if self._versions.get((scope, key)) != version:
            return
        if raw is None:
            items = self.data.get(scope)
            if items is not None:
                items.pop(key, None)
                if not items:
                    del self.data[scope]
        else:
            self.data.setdefault(scope, {})[key] = orjson.loads(raw)

    def _event(self, scope: str, key: str, old: Any, new: Any) -> tuple[dict[str, Any], str | None, str | None] | None:
        if old is _MISSING and new is _MISSING:
            return None  # deleting what is not there
        if _same(old, new):
            return None  # nothing changed: no event
        kind = "created" if old is _MISSING else "deleted" if new is _MISSING else "updated"
        ctx = call_context()
        return ({"type": "state", "event_type": kind, "scope": scope, "key": key,
                 "old_value": None if old is _MISSING else old, "new_value": None if new is _MISSING else new},
                ctx.traceparent, ctx.baggage)

    def _committed(self, seq: int, event: tuple[dict[str, Any], str | None, str | None] | None) -> None:
        """Write ``seq`` is done: emit the events of every write up to the first still open."""
        self._done[seq] = event
        while self._emit_next in self._done:
            ready = self._done.pop(self._emit_next)
            self._emit_next += 1
            if ready is not None:
                self._fan_out(ready)

    # --- state triggers ---------------------------------------------------------------------------

    def register(self, trigger: TriggerEntry) -> None:
        config = trigger.config or {}
        known = ("scope", "key", "condition_function_id")
        known_keys(config, known, f"state trigger {trigger.id!r}")
        optional_strings(config, known, f"state trigger {trigger.id!r}")
        send, receive = trio.open_memory_channel[tuple[dict[str, Any], str | None, str | None]](
            self.config.trigger_buffer)
        sub = _Subscription(trigger, config.get("scope"), config.get("key"), config.get("condition_function_id"),
                            send, receive)
        self._subscriptions[trigger.id] = sub
        if self._nursery is not None:
            self._nursery.start_soon(self._deliver, sub)

    def unregister(self, trigger: TriggerEntry) -> None:
        sub = self._subscriptions.pop(trigger.id, None)
        if sub is not None:
            sub.cancel.cancel()
            sub.send.close()

    def _fan_out(self, ready: tuple[dict[str, Any], str | None, str | None]) -> None:
        event = ready[0]
        for sub in self._subscriptions.values():
            if not sub.matches(event["scope"], event["key"]):
                continue
            offer(sub, ready, what="events", buffer=self.config.trigger_buffer, log=log)

    async def _deliver(self, sub: _Subscription) -> None:
        """One event at a time, in commit order: the condition (if any), then the function."""
        with sub.cancel:
            async for event, traceparent, baggage in sub.receive:
                traceparent = child_traceparent(traceparent)  # the writer's trace goes on
                step = sub.condition
                try:
                    if step is not None and not await self.invoker.call(step, event, traceparent=traceparent,
                                                                        baggage=baggage):
                        continue
                    step = sub.trigger.function_id
                    await self.invoker.call(step, event, traceparent=traceparent, baggage=baggage)
                    sub.delivered += 1
                except EngineError as exc:
                    log.warning("state trigger %s: %s failed on %s of %r/%r: %s", sub.trigger.id, step,
                                event["event_type"], event["scope"], event["key"], exc)


def _address(data: Any, function: str) -> tuple[str, str]:
    if not isinstance(data, dict):
        raise InvocationError(f'{function} needs {{"scope": ..., "key": ...}}, got {_short(data)}',
                              code="invalid_argument")
    return _name(data.get("scope"), "scope", function), _name(data.get("key"), "key", function)


def _name(value: Any, name: str, function: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise InvocationError(f"{function}: {name} must be a non-empty string of at most {MAX_NAME} "
                              f"chars, got {_short(value)}", code="invalid_argument")
    return value




# --- the CLI ------------------------------------------------------------------------------------


def _cmd_state(args: argparse.Namespace, config: Config) -> int:
    with control_client(args, config) as client:
        if args.state_command == "get":
            print_json(client.call("state::get", {"scope": args.scope, "key": args.key}))
        elif args.state_command == "set":
            try:
                value = orjson.loads(args.value)
            except orjson.JSONDecodeError as exc:
                print(f"iii-supervisor: value is not valid JSON ({exc}): {args.value[:200]!r}", file=sys.stderr)
                return 2
            print_json(client.call("state::set", {"scope": args.scope, "key": args.key, "value": value}))
        elif args.state_command == "delete":
            print_json(client.call("state::delete", {"scope": args.scope, "key": args.key}))
        elif args.scope is None:
            answer = client.call("state::list_groups", {})
            if args.json:
                print_json(answer)
            else:
                print(table(["SCOPE", "KEYS"], [[g, str(answer["counts"][g])] for g in answer["groups"]]))
        else:
            items = client.call("state::list", {"scope": args.scope, "include_keys": True})
            if args.json:
                print_json(items)
            else:
                print(table(["KEY", "VALUE"], [[i["key"], _cell(i["value"])] for i in items]))
    return 0


def _cell(value: Any, limit: int = 100) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[:limit] + "…"


def _add_commands(sub: Any) -> None:
    p = sub.add_parser("state", help="read and write the state store")
    verbs = p.add_subparsers(dest="state_command", required=True)
    get = verbs.add_parser("get", help="print a value as JSON (null if none)")
    get.add_argument("scope")
    get.add_argument("key")
    put = verbs.add_parser("set", help="set a value; prints {old_value, new_value}")
    put.add_argument("scope")
    put.add_argument("key")
    put.add_argument("value", help="the value as JSON ('\"text\"', '42', '{\"a\": 1}')")
    delete = verbs.add_parser("delete", help="delete a value; prints the old one")
    delete.add_argument("scope")
    delete.add_argument("key")
    ls = verbs.add_parser("ls", help="the scopes (with how many keys), or the keys and values of SCOPE")
    ls.add_argument("scope", nargs="?")
    ls.add_argument("--json", action="store_true")
    for verb in (get, put, delete, ls):
        add_common(verb)
        verb.set_defaults(func=_cmd_state)


def _build(ctx: ModuleContext, config: StateConfig) -> StateModule:
    return StateModule(config, ctx.registry, ctx.invoker, ctx.store)


SPEC = ModuleSpec(name="state", section="state", config_type=StateConfig, build=_build, add_commands=_add_commands,
                  uses_store=True)
