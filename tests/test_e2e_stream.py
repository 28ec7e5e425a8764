"""Streams end to end: a real supervisor, real worker processes, real WebSocket clients."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionRejected, WebSocketConnection, open_websocket_url

from stream_client import receive
from supervisor_harness import Supervisor, run_cli, write_worker

WORKER = """
    import time

    def auth(req):
        token = req["query_params"].get("token")
        if token == "banned":
            return {"forbidden": True}
        if token != "secret":
            raise ValueError("bad token")
        return {"context": {"user": req["headers"].get("x-user", "anon")}}

    def on_join(event):
        iii.trigger({"function_id": "state::set", "payload": {
            "scope": "joins", "key": event["subscription_id"], "value": event}})
        if event["group_id"] == "private":
            return {"unauthorized": True}
        return {}

    def on_leave(event):
        iii.trigger({"function_id": "state::set", "payload": {
            "scope": "leaves", "key": event["subscription_id"], "value": event}})

    def on_change(event):
        iii.trigger({"function_id": "state::update", "payload": {
            "scope": "seen", "key": event["groupId"], "ops": [{"type": "append", "path": "kinds",
                                                               "value": event["event"]["type"]}]}})

    def change(data):
        return iii.trigger({"function_id": data["fn"], "payload": data["payload"]})

    def flood(data):
        for i in range(data["n"]):
            iii.trigger({"function_id": "stream::set", "payload": {
                "stream_name": "chat", "group_id": "flood", "item_id": "x", "data": {"i": i, "pad": "p" * 200}}})
        return data["n"]

    iii.register_function("t.auth", auth)
    iii.register_function("t.join", on_join)
    iii.register_function("t.leave", on_leave)
    iii.register_function("t.change", change)
    iii.register_function("t.flood", flood)
    iii.register_function("t.onChange", on_change)
    iii.register_trigger({"type": "stream:join", "function_id": "t.join", "config": {}})
    iii.register_trigger({"type": "stream:leave", "function_id": "t.leave", "config": {}})
    iii.register_trigger({"type": "stream", "function_id": "t.onChange",
                          "config": {"stream_name": "chat", "group_id": "room1"}})
"""

CONFIG = """
[supervisor]
store_synchronous = "normal"   # fewer fsyncs: the test is about streams, not durability

[stream]
auth_function_id = "t.auth"
allowed_origins = ["http://app.example"]
send_buffer_bytes = 65536
close_timeout = 0.5
max_subscriptions = 50
"""


async def send(ws: WebSocketConnection, kind: str, **data: Any) -> None:
    await ws.send_message(orjson.dumps({"type": kind, "data": data}).decode())


def sub(sub_id: str, group: str, item: str | None = None) -> dict[str, Any]:
    data = {"subscriptionId": sub_id, "streamName": "chat", "groupId": group}
    if item:
        data["id"] = item
    return data


async def test_streams_end_to_end(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "t", WORKER)
    config = tmp_path / "iii.toml"
    config.write_text(CONFIG)
    origin = [("Origin", "http://app.example"), ("X-User", "ann")]
    with trio.fail_after(60):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(expect_workers=1, functions=("t.flood", "t.onChange"))
            url = f"ws://127.0.0.1:{sup.stream_port}/"

            async def change(fn: str, **payload: Any) -> Any:
                return await sup.call("t.change", {"fn": fn, "payload": {"stream_name": "chat", **payload}})

            await change("stream::set", group_id="room1", item_id="m0", data={"text": "before"})
            # the upgrade: origin, then the auth function
            for headers, query, status in (([("Origin", "http://evil.example")], "?token=secret", 403),
                                           (origin, "?token=wrong", 401), (origin, "?token=banned", 403)):
                with pytest.raises(ConnectionRejected) as refused:
                    async with open_websocket_url(url + query, extra_headers=headers):
                        pass
                assert refused.value.status_code == status, (headers, query)
            async with open_websocket_url(url + "?token=secret", extra_headers=origin) as ws:
                await send(ws, "join", **sub("g", "room1"))
                sync = await receive(ws)
                assert sync["event"] == {"type": "sync", "data": [{"text": "before"}]}
                await send(ws, "join", **sub("i", "room2", "only"))
                assert (await receive(ws))["event"] == {"type": "sync", "data": None}
                await send(ws, "join", **sub("p", "private"))
                assert (await receive(ws))["event"] == {"type": "unauthorized"}
                await ws.send_message("{oops")
                assert (await receive(ws))["error"]["code"] == "invalid_json"

                # a worker changes the streams: only what is subscribed arrives, in order
                await change("stream::set", group_id="private", item_id="x", data=1)
                await change("stream::set", group_id="room2", item_id="other", data=1)
                await change("stream::set", group_id="room2", item_id="only", data={"n": 1})
                item = await receive(ws)
                assert item["groupId"] == "room2" and item["id"] == "only"
                assert item["event"] == {"type": "create", "data": {"n": 1}}
                await change("stream::set", group_id="room1", item_id="m1", data={"text": "hi"})
                await change("stream::update", group_id="room1", item_id="m1",
                             ops=[{"type": "set", "path": "text", "value": "hey"}])
                await change("stream::send", group_id="room1", type="typing", data={"who": "bob"})
                await change("stream::delete", group_id="room1", item_id="m0")
                events = [(await receive(ws))["event"] for _ in range(4)]
                assert events == [{"type": "create", "data": {"text": "hi"}},
                                  {"type": "update", "data": {"text": "hey"}},
                                  {"type": "event", "event": {"type": "typing", "data": {"who": "bob"}}},
                                  {"type": "delete", "data": {"text": "before"}}]
                await send(ws, "leave", subscriptionId="g")
                await send(ws, "leave", subscriptionId="g")
                assert (await receive(ws))["error"]["code"] == "unknown_subscription"
                await change("stream::set", group_id="room1", item_id="m2", data=2)
                await change("stream::set", group_id="room2", item_id="only", data={"n": 2})
                after = await receive(ws)  # room1 is left: the next event is room2's
                assert after["groupId"] == "room2" and after["event"]["data"] == {"n": 2}
            # closing the socket left "i"; "g" was left before; the join handler saw the auth context
            with trio.fail_after(10):
                while await sup.call("state::get", {"scope": "leaves", "key": "i"}) is None:
                    await trio.sleep(0.05)
            assert (await sup.call("state::get", {"scope": "leaves", "key": "g"}))["group_id"] == "room1"
            joined = await sup.call("state::get", {"scope": "joins", "key": "g"})
            assert joined["context"] == {"user": "ann"} and joined["stream_name"] == "chat"
            # the stream trigger (room1 only) saw every room1 change, in order
            with trio.fail_after(10):
                while len((await sup.call("state::get", {"scope": "seen", "key": "room1"}) or {}).get(
                        "kinds", [])) < 6:
                    await trio.sleep(0.05)
            assert (await sup.call("state::get", {"scope": "seen", "key": "room1"}))["kinds"] == [
                "create", "create", "update", "event", "delete", "create"]
            assert await sup.call("state::get", {"scope": "seen", "key": "room2"}) is None

            # a client that stops reading is closed; a reading one gets everything; the worker is not slowed
            stuck = await _stuck_client(sup.stream_port)
            async with open_websocket_url(url + "?token=secret", extra_headers=origin) as reader:
                await send(reader, "join", **sub("f", "flood"))
                assert (await receive(reader))["event"]["type"] == "sync"
                got = 0

                async def read() -> None:
                    nonlocal got
                    while got < 1000:
                        await reader.get_message()
                        got += 1

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    assert await sup.call("t.flood", {"n": 1000}) == 1000
                assert got == 1000
                with trio.fail_after(5):
                    while (stats := await sup.call("engine::streams::stats"))["slow_closed"] < 1:
                        await trio.sleep(0.05)
                    while stats["connections"] > 1:
                        await trio.sleep(0.05)
                        stats = await sup.call("engine::streams::stats")
                stuck.close()
            assert "closing 127.0.0.1" in sup.output() and "with 1008: send buffer full" in sup.output()


async def _stuck_client(port: int) -> socket.socket:
    """A raw client with a tiny receive buffer: handshake (with a good token), join, no reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        sock.connect(("127.0.0.1", port))
    except BlockingIOError:
        await trio.lowlevel.wait_writable(sock)
    sock.send(b"GET /?token=secret HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Origin: http://app.example\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        await trio.lowlevel.wait_readable(sock)
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = orjson.dumps({"type": "join", "data": sub("stuck", "flood")})
    sock.send(bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload)
    return sock


async def test_a_busy_stream_port_is_a_clear_error(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with trio.fail_after(30):
            async with Supervisor(workers) as sup:
                out = await run_cli(sup, "start", str(workers), "--http-port", "0", "--stream-port", str(port))
        assert out.returncode == 1 and b"Traceback" not in out.stderr, out.stderr[-2000:]
        assert f"cannot listen on ws://127.0.0.1:{port}".encode() in out.stderr
    finally:
        taken.close()
