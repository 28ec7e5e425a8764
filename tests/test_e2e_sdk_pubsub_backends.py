"""The official iii SDK (iii-sdk 0.25, over the WebSocket door) against pub/sub and custom stream
backends: ``create_stream`` serves a stream, ``subscribe`` / ``publish`` fan out, a bad subscribe
config is refused."""

from __future__ import annotations

from pathlib import Path

import trio
from trio_websocket import open_websocket_url

from stream_client import join, receive
from supervisor_harness import Supervisor, write_worker

WORKER = """
import threading

from iii import InitOptions, register_worker
from iii.helpers import create_stream
from iii.stream import IStream
from iii_helpers.stream import StreamDeleteResult, StreamSetResult

iii = register_worker(options=InitOptions(worker_name="sdk-pubsub-backends"))   # III_URL from the supervisor


class Memory(IStream):
    def __init__(self):
        self.items = {}

    async def get(self, input):
        return self.items.get((input.group_id, input.item_id))

    async def set(self, input):
        old = self.items.get((input.group_id, input.item_id))
        self.items[(input.group_id, input.item_id)] = input.data
        return StreamSetResult(old_value=old, new_value=input.data)

    async def delete(self, input):
        return StreamDeleteResult(old_value=self.items.pop((input.group_id, input.item_id), None))

    async def list(self, input):
        return [v for (g, _), v in sorted(self.items.items()) if g == input.group_id]

    async def list_groups(self, input):
        return sorted({g for g, _ in self.items})

    async def update(self, input):
        return None


create_stream(iii, "sdkmem", Memory())


def on_order(data):
    iii.trigger({"function_id": "stream::set", "payload": {
        "stream_name": "seen", "group_id": "g", "item_id": f"sdk-{data['n']}", "data": data}})


def publish(data):
    return iii.trigger({"function_id": "publish", "payload": {"topic": "orders", "data": data}})


iii.register_function("sdk.onOrder", on_order)
iii.register_function("sdk.publish", publish)
iii.register_trigger({"type": "subscribe", "function_id": "sdk.onOrder", "config": {"topic": "orders"}})
iii.register_trigger({"type": "subscribe", "function_id": "sdk.onOrder", "config": {}})   # refused
threading.Event().wait()
"""


async def test_official_sdk_create_stream_and_pubsub(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "sdk", WORKER, preamble=False)
    config = tmp_path / "iii.toml"
    config.write_text('[supervisor]\nstore_synchronous = "normal"\n[iii]\nport = 0\n')
    with trio.fail_after(60):
        async with Supervisor(workers, "--config", str(config), env={"OTEL_ENABLED": "false"}) as sup:
            await sup.start(expect_workers=1, functions=("sdk.publish", "stream::list_groups(sdkmem)"), timeout=30)
            async with open_websocket_url(f"ws://127.0.0.1:{sup.stream_port}/") as ws:
                await join(ws, "m", "sdkmem", "room")
                assert (await receive(ws))["event"] == {"type": "sync", "data": []}
                address = {"stream_name": "sdkmem", "group_id": "room", "item_id": "i"}
                assert await sup.call("stream::set", {**address, "data": {"v": 1}}) == {
                    "old_value": None, "new_value": {"v": 1}}
                assert (await receive(ws))["event"] == {"type": "create", "data": {"v": 1}}
                assert await sup.call("stream::update", {**address, "ops": [
                    {"type": "increment", "path": "v", "by": 2}]}) == {"old_value": {"v": 1}, "new_value": {"v": 3}}
                assert (await receive(ws))["event"] == {"type": "update", "data": {"v": 3}}
                assert await sup.call("stream::list", address) == [{"v": 3}]
                assert await sup.call("stream::list_groups", address) == ["room"]
                assert await sup.call("stream::delete", address) == {"old_value": {"v": 3}}
                assert (await receive(ws))["event"] == {"type": "delete", "data": {"v": 3}}
                assert await sup.call("stream::get", address) is None

                await join(ws, "s", "seen", "g")
                assert (await receive(ws))["event"] == {"type": "sync", "data": []}
                assert await sup.call("sdk.publish", {"n": 7}) is None
                assert (await receive(ws))["id"] == "sdk-7"
            stats = await sup.call("engine::pubsub::stats", {})
            assert [s["function_id"] for t in stats["topics"] for s in t["subscribers"]] == ["sdk.onOrder"]
            await sup.wait_for_output("config.topic is required")  # the refusal, logged (the SDK logs it too)
