"""The stream module in process: real WebSocket clients (trio-websocket) on loopback, fake workers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from iii_supervisor.errors import InvocationError
from iii_supervisor.modules import stream
from inprocess import EngineParts, engine_parts
from memstore import MemoryStore
from stream_client import receive


@asynccontextmanager
async def started(config: dict[str, Any] | None = None) -> AsyncIterator[tuple[EngineParts, int]]:
    section = {"port": 0, **(config or {})}
    async with engine_parts(modules=[stream.SPEC], config={"stream": section}, store=MemoryStore()) as parts:
        module = parts.modules["stream"]
        yield parts, module.port  # type: ignore[attr-defined]


async def send(ws: WebSocketConnection, kind: str, **data: Any) -> None:
    await ws.send_message(orjson.dumps({"type": kind, "data": data}).decode())


def join(sub: str, group: str = "room1", item: str | None = None) -> dict[str, Any]:
    data = {"subscriptionId": sub, "streamName": "chat", "groupId": group}
    if item is not None:
        data["id"] = item
    return data


async def test_join_sync_changes_and_leave() -> None:
    with trio.fail_after(20):
        async with started() as (parts, port):
            worker = await parts.worker("w")
            await worker.call("stream::set", {"stream_name": "chat", "group_id": "room1", "item_id": "m0",
                                              "data": {"text": "first"}})
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                await send(ws, "join", **join("s1"))
                sync = await receive(ws)
                assert sync["event"] == {"type": "sync", "data": [{"text": "first"}]}
                assert sync["subscriptionId"] == "s1" and sync["streamName"] == "chat"
                await send(ws, "join", **join("s2", item="m1"))
                assert (await receive(ws))["event"] == {"type": "sync", "data": None}
                # m1 matches both subscriptions: delivered once
                answer = await worker.call("stream::set", {"stream_name": "chat", "group_id": "room1",
                                                           "item_id": "m1", "data": {"text": "hi"}})
                assert answer == {"old_value": None, "new_value": {"text": "hi"}}
                created = await receive(ws)
                assert created["type"] == "stream" and created["id"] == "m1"
                assert created["event"] == {"type": "create", "data": {"text": "hi"}}
                assert isinstance(created["timestamp"], int)
                await worker.call("stream::update", {"stream_name": "chat", "group_id": "room1", "item_id": "m1",
                                                     "ops": [{"type": "set", "path": "text", "value": "hey"}]})
                assert (await receive(ws))["event"] == {"type": "update", "data": {"text": "hey"}}
                await worker.call("stream::send", {"stream_name": "chat", "group_id": "room1", "type": "typing",
                                                   "data": {"who": "ann"}})
                custom = await receive(ws)
                assert custom["event"] == {"type": "event", "event": {"type": "typing", "data": {"who": "ann"}}}
                await send(ws, "leave", subscriptionId="s1")
                await worker.call("stream::delete", {"stream_name": "chat", "group_id": "room1", "item_id": "m0"})
                # only item subscription s2 (m1) remains: m0's delete is not delivered; m1's is
                await worker.call("stream::delete", {"stream_name": "chat", "group_id": "room1", "item_id": "m1"})
                deleted = await receive(ws)
                assert deleted["id"] == "m1" and deleted["event"] == {"type": "delete", "data": {"text": "hey"}}
                await send(ws, "leave", subscriptionId="nope")
                error = await receive(ws)
                assert error["type"] == "error" and error["error"]["code"] == "unknown_subscription"
                assert "'nope'" in error["error"]["message"]


async def test_builtins_have_the_reference_shapes_and_refuse_bad_arguments() -> None:
    with trio.fail_after(10):
        async with started({"max_value_size": 100}) as (parts, _port):
            w = await parts.worker("w")
            for item, group in (("a", "g1"), ("b", "g1"), ("c", "g2")):
                await w.call("stream::set", {"stream_name": "s", "group_id": group, "item_id": item, "data": item})
            assert await w.call("stream::get", {"stream_name": "s", "group_id": "g1", "item_id": "b"}) == "b"
            assert await w.call("stream::list", {"stream_name": "s", "group_id": "g1"}) == ["a", "b"]
            assert await w.call("stream::list_groups", {"stream_name": "s"}) == ["g1", "g2"]
            assert await w.call("stream::list_all", {}) == {"stream": [{"id": "s", "groups": ["g1", "g2"]}],
                                                            "count": 1}
            assert await w.call("stream::delete", {"stream_name": "s", "group_id": "g2", "item_id": "c"}) == {
                "old_value": "c"}
            assert await w.call("stream::list_groups", {"stream_name": "s"}) == ["g1"]
            with pytest.raises(InvocationError) as bad:
                await w.call("stream::set", {"stream_name": "s", "group_id": "", "item_id": "x", "data": 1})
            assert bad.value.code == "invalid_argument" and "group_id" in bad.value.message
            with pytest.raises(InvocationError) as big:
                await w.call("stream::set", {"stream_name": "s", "group_id": "g", "item_id": "x", "data": "x" * 200})
            assert big.value.code == "VALUE_TOO_LARGE"
            with pytest.raises(InvocationError) as op:
                await w.call("stream::update", {"stream_name": "s", "group_id": "g1", "item_id": "a",
                                                "ops": [{"type": "increment", "path": "n"}]})
            assert op.value.code == "update_path_error" or op.value.code == "update_type_error"
            assert await w.call("stream::get", {"stream_name": "s", "group_id": "g1", "item_id": "a"}) == "a"


async def test_malformed_messages_get_error_events_and_the_socket_stays_open() -> None:
    with trio.fail_after(10):
        async with started({"max_subscriptions": 5}) as (_parts, port):
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                cases = [
                    ("not json {", "invalid_json"),
                    ("[1, 2]", "invalid_message"),
                    ('{"type": "dance"}', "unknown_message_type"),
                    ('{"type": "join", "data": 3}', "invalid_message"),
                    ('{"type": "join", "data": {"subscriptionId": "s", "streamName": 1, "groupId": "g"}}',
                     "invalid_message"),
                    ('{"type": "join", "data": {"streamName": "a", "groupId": "g"}}', "invalid_message"),
                ]
                for raw, code in cases:
                    await ws.send_message(raw)
                    event = await receive(ws)
                    assert event["type"] == "error" and event["error"]["code"] == code, (raw, event)
                await ws.send_message(b"\xff\xfe binary")
                assert (await receive(ws))["error"]["code"] == "invalid_json"
                for i in range(5):
                    await send(ws, "join", **join(f"s{i}"))
                    assert (await receive(ws))["event"]["type"] == "sync"
                await send(ws, "join", **join("s0"))
                assert (await receive(ws))["error"]["code"] == "duplicate_subscription"
                for i in range(5, 10_000):  # 10,000 joins: the limit holds, the connection survives
                    await send(ws, "join", **join(f"s{i}"))
                errors = [await receive(ws) for _ in range(5, 10_000)]
                assert {e["error"]["code"] for e in errors} == {"too_many_subscriptions"}
                assert "stream.max_subscriptions" in errors[0]["error"]["message"]
                await send(ws, "leave", subscriptionId="s0")
                await send(ws, "join", **join("again"))
                assert (await receive(ws))["event"]["type"] == "sync"


async def test_an_oversize_message_closes_with_1009() -> None:
    with trio.fail_after(10):
        async with started({"max_message_size": 1000}) as (_parts, port):
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send_message("x" * 2000)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1009


async def test_join_handlers_can_deny_and_leave_handlers_run_on_disconnect() -> None:
    with trio.fail_after(10):
        async with started() as (parts, port):
            w = await parts.worker("w")
            joins: list[Any] = []
            leaves: list[Any] = []
            left = trio.Event()

            async def on_join(data: Any) -> Any:
                joins.append(data)
                return {"unauthorized": True} if data["group_id"] == "secret" else None

            async def on_leave(data: Any) -> None:
                leaves.append(data)
                if len(leaves) == 2:
                    left.set()

            await w.register_function("w.join", on_join)
            await w.register_function("w.leave", on_leave)
            await w.register_trigger("stream:join", "w.join")
            await w.register_trigger("stream:leave", "w.leave")
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                await send(ws, "join", **join("s1", group="secret"))
                denied = await receive(ws)
                assert denied["event"] == {"type": "unauthorized"} and denied["subscriptionId"] == "s1"
                await w.call("stream::set", {"stream_name": "chat", "group_id": "secret", "item_id": "x", "data": 1})
                await send(ws, "join", **join("s2", group="open"))
                sync = await receive(ws)  # no event from the denied group came before it
                assert sync["event"]["type"] == "sync" and sync["groupId"] == "open"
                await send(ws, "join", **join("s3", group="open", item="i"))
                await receive(ws)
            await left.wait()
            assert [j["group_id"] for j in joins] == ["secret", "open", "open"]
            assert joins[0]["subscription_id"] == "s1" and joins[0]["stream_name"] == "chat"
            assert sorted(leave["subscription_id"] for leave in leaves) == ["s2", "s3"]


async def test_auth_function_and_origin_check() -> None:
    with trio.fail_after(10):
        async with started({"auth_function_id": "w.auth", "allowed_origins": ["http://good.example"]}) as (
                parts, port):
            w = await parts.worker("w")
            seen: list[Any] = []

            async def auth(data: Any) -> Any:
                seen.append(data)
                token = data["query_params"].get("token")
                if token == "ok":
                    return {"context": {"user": "ann"}}
                if token == "banned":
                    return {"forbidden": True}
                raise ValueError("bad token")

            async def on_join(data: Any) -> Any:
                seen.append(("join", data["context"]))
                return None

            await w.register_function("w.auth", auth)
            await w.register_function("w.join", on_join)
            await w.register_trigger("stream:join", "w.join")
            url = f"ws://127.0.0.1:{port}/live"
            good = [("Origin", "http://good.example")]
            with pytest.raises(ConnectionRejected) as origin:
                async with open_websocket_url(url + "?token=ok", extra_headers=[("Origin", "http://evil.example")]):
                    pass
            assert origin.value.status_code == 403
            assert seen == []  # the origin check comes before the auth function
            for token, status in (("nope", 401), ("banned", 403)):
                with pytest.raises(ConnectionRejected) as refused:
                    async with open_websocket_url(f"{url}?token={token}", extra_headers=good):
                        pass
                assert refused.value.status_code == status
            async with open_websocket_url(url + "?token=ok&x=1&x=2", extra_headers=good) as ws:
                await send(ws, "join", **join("s1"))
                assert (await receive(ws))["event"]["type"] == "sync"
            request = seen[-2]
            assert request["path"] == "/live" and request["query_params"] == {"token": "ok", "x": ["1", "2"]}
            assert request["headers"]["origin"] == "http://good.example"
            assert request["addr"].startswith("127.0.0.1:")
            assert seen[-1] == ("join", {"user": "ann"})


async def test_a_client_that_never_reads_is_closed_with_1008_and_others_keep_up() -> None:
    """10,000 changes while two subscribers stop reading: both are closed promptly (the one that
    reads again gets the close frame with 1008, the one that never does is cut), memory stays
    bounded, and a reading subscriber gets every change."""
    limit = 512 * 1024
    close_timeout = 1.0
    with trio.fail_after(30):
        async with started({"send_buffer_bytes": limit, "close_timeout": close_timeout}) as (parts, port):
            w = await parts.worker("w")
            module: Any = parts.modules["stream"]
            late = await _stuck_client(port)  # reads again once the server gave up on it
            dead = await _stuck_client(port)  # never reads
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as reader:
                await send(reader, "join", **join("r"))
                assert (await receive(reader))["event"]["type"] == "sync"
                got = 0
                peak = 0
                late_data = b""

                async def read_all() -> None:
                    nonlocal got
                    while got < 10_000:
                        await reader.get_message()
                        got += 1

                async def read_late() -> None:
                    nonlocal late_data
                    while module.slow_closed == 0:
                        await trio.sleep(0.005)
                    while True:
                        await trio.lowlevel.wait_readable(late)
                        try:
                            chunk = late.recv(1 << 16)
                        except (BlockingIOError, ConnectionResetError):
                            chunk = b"" if late.fileno() == -1 else None  # type: ignore[assignment]
                            if chunk is None:
                                continue
                        if not chunk:
                            return
                        late_data += chunk

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_all)
                    nursery.start_soon(read_late)
                    payload = "x" * 200

                    async def produce(first: int) -> None:
                        nonlocal peak
                        for i in range(first, 10_000, 4):
                            await w.call("stream::set", {"stream_name": "chat", "group_id": "room1", "item_id": "m",
                                                         "data": {"n": i, "p": payload}})
                            if i % 50 == 0:
                                peak = max(peak, (await module._stats({}))["max_buffered_bytes"])

                    async with trio.open_nursery() as producers:
                        for first in range(4):
                            producers.start_soon(produce, first)
                    decided = trio.current_time()
                    with trio.fail_after(3 * close_timeout + 1):
                        while (await module._stats({}))["connections"] > 1:
                            await trio.sleep(0.01)
                    closed_in = trio.current_time() - decided
                assert got == 10_000
                assert peak <= limit
                assert module.slow_closed == 2
                # what the late reader got ends with our close frame: opcode 0x88, code 1008
                assert late_data.endswith(b"\x88" + bytes([2 + len(_REASON)]) + (1008).to_bytes(2, "big") + _REASON)
                assert closed_in < 3 * close_timeout + 1
            dead.setblocking(True)
            dead.settimeout(5)
            rest = b""
            try:
                while chunk := dead.recv(1 << 16):
                    rest += chunk
            except ConnectionResetError:
                pass
            assert (1008).to_bytes(2, "big") + _REASON not in rest  # never read: it was cut, not closed politely
            late.close()
            dead.close()


_REASON = b"send buffer full (524288 bytes): the client is not reading"


async def _stuck_client(port: int) -> socket.socket:
    """A raw client with a tiny receive buffer: handshake, join room1, then no reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    sock.setblocking(False)
    head = b""
    while b"\r\n\r\n" not in head:
        await trio.lowlevel.wait_readable(sock)
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    sock.send(_masked_text(orjson.dumps({"type": "join", "data": join("stuck")})))
    return sock


def _masked_text(payload: bytes) -> bytes:
    """A client frame (masked with a zero key: the bytes are the payload)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


async def test_pings_and_pongs_interleave_with_fan_out() -> None:
    """trio-websocket's own control frames (pongs to the client's pings) arrive intact in the
    middle of a burst of pre-encoded frames."""
    with trio.fail_after(20):
        async with started({"ping_interval": 0.05}) as (parts, port):
            w = await parts.worker("w")
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                await send(ws, "join", **join("s"))
                await receive(ws)
                got = []

                async def read() -> None:
                    while len(got) < 2000:
                        got.append(orjson.loads(await ws.get_message()))

                async def ping() -> None:
                    for _ in range(50):
                        await ws.ping()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read)
                    nursery.start_soon(ping)
                    for i in range(2000):
                        await w.call("stream::set", {"stream_name": "chat", "group_id": "room1", "item_id": "m",
                                                     "data": {"n": i, "pad": "y" * (i % 300)}})
                assert [e["event"]["data"]["n"] for e in got] == list(range(2000))


async def test_a_connection_that_answers_no_ping_is_closed() -> None:
    with trio.fail_after(10):
        async with started({"ping_interval": 0.1, "ping_timeout": 0.2, "close_timeout": 0.2}) as (parts, port):
            module: Any = parts.modules["stream"]
            silent = await _stuck_client(port)  # completes the handshake, then never answers anything
            try:
                async with open_websocket_url(f"ws://127.0.0.1:{port}/") as alive:  # trio-websocket answers pings
                    await send(alive, "join", **join("a"))
                    await receive(alive)
                    start = trio.current_time()
                    while (await module._stats({}))["connections"] > 1:
                        await trio.sleep(0.02)
                    assert trio.current_time() - start < 2
                    await trio.sleep(0.5)  # several ping rounds: the answering client stays
                    assert (await module._stats({}))["connections"] == 1
                silent.setblocking(True)
                silent.settimeout(5)
                data = b""
                while chunk := silent.recv(65536):
                    data += chunk
                assert b"\x88" in data and (1001).to_bytes(2, "big") + b"no pong within ping_timeout" in data
            finally:
                silent.close()


async def test_garbage_before_the_handshake_and_slow_handshakes_leave_the_endpoint_serving() -> None:
    with trio.fail_after(15):
        async with started({"handshake_timeout": 0.3, "max_connections": 8}) as (_parts, port):
            async def raw(data: bytes) -> bytes:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                try:
                    await stream.send_all(data)
                    out = b""
                    with trio.move_on_after(2):
                        while chunk := await stream.receive_some(65536):
                            out += chunk
                    return out
                except trio.BrokenResourceError:
                    return b""
                finally:
                    await stream.aclose()

            await raw(bytes(range(256)) * 64)                              # not HTTP at all
            await raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")                # HTTP, no upgrade
            await raw(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # a head never finished
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(8)]  # fill max_connections
            try:
                await trio.sleep(0.05)
                with pytest.raises((HandshakeError, ConnectionClosed, trio.BrokenResourceError, OSError)):
                    async with open_websocket_url(f"ws://127.0.0.1:{port}/", connect_timeout=2) as ws:  # the 9th
                        await ws.get_message()
                await trio.sleep(0.6)  # past handshake_timeout: they are dropped, the slots come back
                async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                    await send(ws, "join", **join("s"))
                    assert (await receive(ws))["event"]["type"] == "sync"
            finally:
                for stream in idle:
                    await stream.aclose()
