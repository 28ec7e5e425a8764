"""Pub/sub and custom stream backends end to end: a real supervisor, our SDK's worker processes,
a real WebSocket client (one supervisor run for both, to keep the suite short)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from iii_supervisor.errors import InvocationError
from stream_client import join, receive
from supervisor_harness import Supervisor, write_worker

SUBSCRIBERS = """
    import time

    def seen(name):
        def handler(data):
            iii.trigger({"function_id": "stream::set", "payload": {
                "stream_name": "seen", "group_id": "g", "item_id": f"{name}-{data['n']}", "data": data}})
        return handler

    def failing(data):
        raise RuntimeError("subscriber down")

    def slow(data):
        time.sleep(30)

    def publish(data):
        if data.get("void"):
            return iii.trigger({"function_id": "publish", "payload": data["message"], "action": TriggerAction.Void()})
        return iii.trigger({"function_id": "publish", "payload": data["message"]})

    iii.register_function("s.a", seen("a"))
    iii.register_function("s.b", seen("b"))
    iii.register_function("s.fail", failing)
    iii.register_function("s.slow", slow)
    iii.register_function("s.publish", publish)
    for fn in ("s.a", "s.b", "s.fail", "s.slow"):
        iii.register_trigger({"type": "subscribe", "function_id": fn, "config": {"topic": "orders"}})
"""

BACKEND = """
    items = {}

    def get(data):
        return items.get((data["group_id"], data["item_id"]))

    def put(data):
        key = (data["group_id"], data["item_id"])
        old = items.get(key)
        items[key] = data["data"]
        return {"old_value": old, "new_value": data["data"]}

    def delete(data):
        return {"old_value": items.pop((data["group_id"], data["item_id"]), None)}

    def list_items(data):
        return [v for (g, _), v in sorted(items.items()) if g == data["group_id"]]

    def list_groups(data):
        return sorted({g for g, _ in items})

    for verb, fn in (("get", get), ("set", put), ("delete", delete), ("list", list_items),
                     ("list_groups", list_groups)):
        iii.register_function(f"stream::{verb}(mem)", fn)
"""


async def test_pubsub_and_custom_stream_backends_end_to_end(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "subs", SUBSCRIBERS)
    write_worker(workers, "backend", BACKEND)
    config = tmp_path / "iii.toml"
    config.write_text('[supervisor]\nstore_synchronous = "normal"\n[pubsub]\ndelivery_timeout_ms = 60000\n')
    with trio.fail_after(90):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(expect_workers=2, functions=("s.publish", "stream::list_groups(mem)"))
            async with open_websocket_url(f"ws://127.0.0.1:{sup.stream_port}/") as ws:
                # --- pub/sub: a worker publishes; every binding gets it, failing and slow ones hurt nobody
                await join(ws, "seen", "seen", "g")
                assert (await receive(ws))["event"] == {"type": "sync", "data": []}
                assert await sup.call("s.publish", {"message": {"topic": "orders", "data": {"n": 1}}}) is None
                assert await sup.call("s.publish", {"void": True, "message": {"topic": "orders",
                                                                               "data": {"n": 2}}}) is None
                got = {(await receive(ws))["id"] for _ in range(4)}
                assert got == {"a-1", "b-1", "a-2", "b-2"}
                with trio.fail_after(10):
                    while True:
                        stats = await sup.call("engine::pubsub::stats", {})
                        subs = {s["function_id"]: s for s in stats["topics"][0]["subscribers"]}
                        if (subs["s.fail"]["failed"], subs["s.a"]["delivered"], subs["s.b"]["delivered"]) == (2, 2, 2):
                            break  # (a handler's answer comes just after its stream::set)
                        await trio.sleep(0.05)
                    await sup.wait_for_output("subscriber down")  # (the failure is logged)
                assert stats["published"] == 2 and subs["s.slow"]["in_flight"] == 2
                with pytest.raises(InvocationError) as info:
                    await sup.call("publish", {"data": 1})
                assert info.value.code == "topic_not_set"

                # --- a custom stream backend: the built-ins delegate, clients still see every change
                await join(ws, "mem", "mem", "room")
                assert (await receive(ws))["event"] == {"type": "sync", "data": []}
                address = {"stream_name": "mem", "group_id": "room", "item_id": "m1"}
                assert await sup.call("stream::set", {**address, "data": {"v": 1}}) == {
                    "old_value": None, "new_value": {"v": 1}}
                assert (await receive(ws))["event"] == {"type": "create", "data": {"v": 1}}
                assert await sup.call("stream::update", {**address, "ops": [
                    {"type": "increment", "path": "v", "by": 4}]}) == {"old_value": {"v": 1}, "new_value": {"v": 5}}
                assert (await receive(ws))["event"] == {"type": "update", "data": {"v": 5}}
                assert await sup.call("stream::get", address) == {"v": 5}
                assert await sup.call("stream::list_groups", {"stream_name": "mem"}) == ["room"]
                assert await sup.call("stream::list_all", {}) == {"stream": [{"id": "seen", "groups": ["g"]}],
                                                                  "count": 1}  # (mem is not in the store)
                assert await sup.call("stream::delete", address) == {"old_value": {"v": 5}}
                assert (await receive(ws))["event"] == {"type": "delete", "data": {"v": 5}}

                # the backend's worker stops: the stream is refused with a clear error, not served from the store
                await sup.call("engine::workers::stop", {"name": "backend"})
                with trio.fail_after(10):
                    while "stream::get(mem)" in await sup.function_ids():
                        await trio.sleep(0.05)
                with pytest.raises(InvocationError) as info:
                    await sup.call("stream::set", {**address, "data": 1})
                assert info.value.code == "stream_backend_unavailable" and "'mem'" in info.value.message
                await sup.call("engine::workers::start", {"name": "backend"})
                with trio.fail_after(15):
                    while "stream::set(mem)" not in await sup.function_ids():
                        await trio.sleep(0.05)
                assert await sup.call("stream::set", {**address, "data": 2}) == {"old_value": None, "new_value": 2}
