"""Custom stream backends in process: a fake worker's ``stream::<verb>(<name>)`` functions serve a
stream; the built-ins delegate to them, change events still reach clients and triggers."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from iii_supervisor.errors import InvocationError
from iii_supervisor.modules import stream
from iii_supervisor.modules.stream.logic import backend_delete_result, backend_function, backend_write_result
from inprocess import FakeWorker, engine_parts
from memstore import MemoryStore
from test_stream_inprocess import receive, send


class DictBackend:
    """What the official SDK's ``create_stream`` registers, over a dict; records every payload."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []

    async def install(self, worker: FakeWorker, name: str, *, verbs: tuple[str, ...] = (
            "get", "set", "delete", "list", "list_groups")) -> None:
        for verb in verbs:
            await worker.register_function(backend_function(verb, name), self._handler(verb))

    def _handler(self, verb: str) -> Any:
        async def handle(data: Any) -> Any:
            self.calls.append((verb, data))
            group = self.items.setdefault((data["stream_name"], data.get("group_id", "")), {})
            if verb == "get":
                return group.get(data["item_id"])
            if verb == "set":
                old = group.get(data["item_id"])
                group[data["item_id"]] = data["data"]
                return {"old_value": old, "new_value": data["data"]}
            if verb == "delete":
                return {"old_value": group.pop(data["item_id"], None)}
            if verb == "list":
                return list(group.values())
            return sorted(g for (s, g), items in self.items.items() if s == data["stream_name"] and items)
        return handle


def test_backend_answers_are_checked() -> None:
    assert backend_function("list_groups", "chat") == "stream::list_groups(chat)"
    assert backend_write_result("f", "set", {"new_value": 1}) == (None, 1)
    assert backend_delete_result("f", {}) is None
    for bad in (None, 3, {"old_value": 1}):
        with pytest.raises(InvocationError) as info:
            backend_write_result("stream::set(chat)", "set", bad)
        assert info.value.code == "stream_backend_error" and "stream::set(chat)" in info.value.message
    with pytest.raises(InvocationError):
        backend_delete_result("f", None)


async def test_builtins_delegate_and_events_still_flow() -> None:
    with trio.fail_after(20):
        async with engine_parts(modules=[stream.SPEC], config={"stream": {"port": 0}}, store=MemoryStore()) as parts:
            port = parts.modules["stream"].port  # type: ignore[attr-defined]
            backend, events = DictBackend(), trio.open_memory_channel[Any](100)
            w = await parts.worker("backend")
            await backend.install(w, "chat")

            async def on_change(event: Any) -> None:
                events[0].send_nowait(event)

            await w.register_function("w.on_change", on_change)
            await w.register_trigger("stream", "w.on_change", {"stream_name": "chat"})
            caller = await parts.worker("caller")
            address = {"stream_name": "chat", "group_id": "room1", "item_id": "m1"}
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                await send(ws, "join", subscriptionId="s1", streamName="chat", groupId="room1")
                assert (await receive(ws))["event"] == {"type": "sync", "data": []}  # from the backend's list
                assert await caller.call("stream::set", {**address, "data": {"text": "hi"}}) == {
                    "old_value": None, "new_value": {"text": "hi"}}
                assert (await receive(ws))["event"] == {"type": "create", "data": {"text": "hi"}}
                assert (await events[1].receive())["event"]["type"] == "create"
                assert backend.calls[-1] == ("set", {**address, "data": {"text": "hi"}})  # the reference's payload
                assert await caller.call("stream::get", address) == {"text": "hi"}
                assert await caller.call("stream::list", {"stream_name": "chat", "group_id": "room1"}) == [
                    {"text": "hi"}]
                assert await caller.call("stream::list_groups", {"stream_name": "chat"}) == ["room1"]
                # update without stream::update(chat): get + ops here + set, one change event
                answer = await caller.call("stream::update", {**address, "ops": [
                    {"type": "set", "path": "text", "value": "hey"}, {"type": "increment", "path": "n", "by": 2}]})
                assert answer == {"old_value": {"text": "hi"}, "new_value": {"text": "hey", "n": 2}}
                assert [verb for verb, _ in backend.calls[-2:]] == ["get", "set"]
                assert (await receive(ws))["event"] == {"type": "update", "data": {"text": "hey", "n": 2}}
                with pytest.raises(InvocationError) as info:  # a bad op: nothing is set
                    await caller.call("stream::update", {**address, "ops": [{"type": "increment", "path": "text",
                                                                             "by": 1}]})
                assert info.value.code == "update_type_error" and backend.calls[-1][0] == "get"
                assert await caller.call("stream::delete", address) == {"old_value": {"text": "hey", "n": 2}}
                assert (await receive(ws))["event"] == {"type": "delete", "data": {"text": "hey", "n": 2}}
                assert await caller.call("stream::delete", address) == {"old_value": None}  # no event
                # the store was never touched; other streams still use it
                assert parts.modules["stream"].data == {}  # type: ignore[attr-defined]
                await caller.call("stream::set", {"stream_name": "plain", "group_id": "g", "item_id": "i", "data": 1})
                assert await caller.call("stream::list_all", {}) == {"stream": [{"id": "plain", "groups": ["g"]}],
                                                                     "count": 1}
                await caller.call("stream::set", {**address, "item_id": "m2", "data": "x"})
                assert (await receive(ws))["id"] == "m2"  # (nothing else came between)
                # the backend's worker leaves: the stream is refused, not served from the store
                w.session.close()
                while parts.registry.lookup("stream::get(chat)") is not None:
                    await trio.sleep(0.01)
                for verb, data in [("get", address), ("set", {**address, "data": 1}), ("delete", address),
                                   ("update", {**address, "ops": []}),
                                   ("list", {"stream_name": "chat", "group_id": "room1"})]:
                    with pytest.raises(InvocationError) as info:
                        await caller.call(f"stream::{verb}", data)
                    assert info.value.code == "stream_backend_unavailable"
                    assert "'chat'" in info.value.message and "is not registered" in info.value.message
                await send(ws, "join", subscriptionId="s2", streamName="chat", groupId="room1")
                failed = await receive(ws)
                assert failed["type"] == "error" and failed["error"]["code"] == "sync_failed"
                # it comes back (a restarted worker): served again, same data
                again = await parts.worker("backend2")
                await backend.install(again, "chat")
                assert await caller.call("stream::get", {**address, "item_id": "m2"}) == "x"


async def test_a_backend_with_its_own_update_and_bad_answers() -> None:
    with trio.fail_after(20):
        async with engine_parts(modules=[stream.SPEC], config={"stream": {"port": 0, "custom_backends": ["ledger"]}},
                                store=MemoryStore()) as parts:
            caller = await parts.worker("caller")
            address = {"stream_name": "ledger", "group_id": "g", "item_id": "i"}
            with pytest.raises(InvocationError) as info:  # declared custom: refused before its worker is up
                await caller.call("stream::set", {**address, "data": 1})
            assert info.value.code == "stream_backend_unavailable"
            w = await parts.worker("ledger")
            updates: list[Any] = []

            async def update(data: Any) -> Any:
                updates.append(data)
                return {"old_value": 1, "new_value": 2}

            async def bad_set(_data: Any) -> Any:
                return None  # (IStream.set may return None: the reference refuses that too)

            async def failing_get(_data: Any) -> Any:
                raise RuntimeError("disk on fire")

            await w.register_function("stream::update(ledger)", update)
            await w.register_function("stream::set(ledger)", bad_set)
            await w.register_function("stream::get(ledger)", failing_get)
            ops = [{"type": "increment", "path": "", "by": 1}]
            assert await caller.call("stream::update", {**address, "ops": ops}) == {"old_value": 1, "new_value": 2}
            assert updates == [{**address, "ops": ops}]
            with pytest.raises(InvocationError) as info:
                await caller.call("stream::set", {**address, "data": 1})
            assert info.value.code == "stream_backend_error" and "stream::set(ledger)" in info.value.message
            with pytest.raises(InvocationError) as info:
                await caller.call("stream::get", address)
            assert info.value.code == "invocation_failed" and "disk on fire" in info.value.message
            with pytest.raises(InvocationError) as info:  # list is not served by this backend
                await caller.call("stream::list", {"stream_name": "ledger", "group_id": "g"})
            assert info.value.code == "stream_backend_unavailable" and "stream::list(ledger)" in info.value.message


async def test_a_backend_answer_nested_too_deep_for_json_does_not_fail_the_writes_around_it() -> None:
    """A worker's answer may nest deeper than orjson encodes (it decodes up to 1024 levels): its
    change event cannot reach subscribers, and that must fail neither the call nor other writes."""
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    with trio.fail_after(10):
        async with engine_parts(modules=[stream.SPEC], config={"stream": {"port": 0}}, store=MemoryStore()) as parts:
            port = parts.modules["stream"].port  # type: ignore[attr-defined]
            answers = [{"old_value": None, "new_value": deep}, {"old_value": None, "new_value": {"ok": 1}}]

            async def backend_set(_data: Any) -> Any:
                return answers.pop(0)

            async def backend_list(_data: Any) -> Any:
                return []

            parts.registry.add_builtin(backend_function("set", "chat"), backend_set, "")
            parts.registry.add_builtin(backend_function("list", "chat"), backend_list, "")
            address = {"stream_name": "chat", "group_id": "room1", "item_id": "m1"}
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                await send(ws, "join", subscriptionId="s1", streamName="chat", groupId="room1")
                assert (await receive(ws))["event"]["type"] == "sync"
                first = await parts.invoker.call("stream::set", {**address, "data": 1})
                assert first["new_value"] is deep
                await parts.invoker.call("stream::set", {**address, "data": 2})
                event = (await receive(ws))["event"]
                assert event["type"] == "create" and event["data"] == {"ok": 1}
