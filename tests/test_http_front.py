"""The HTTP front in this process, over real loopback sockets, for what is about scheduling
(and so easier to observe from inside the event loop than from another process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import httpx
import pytest
import trio

from iii_supervisor.channels import ChannelTable
from iii_supervisor.invocation import Invoker
from iii_supervisor.registry import Registry
from iii_supervisor.server import http as http_module
from iii_supervisor.server.http.config import HttpConfig
from iii_supervisor.server.http.front import HttpFront
from inprocess import engine_parts


@asynccontextmanager
async def front() -> AsyncIterator[int]:
    """An HTTP front with no routes (every request: 404) on a free loopback port."""
    registry = Registry()
    http = HttpFront(HttpConfig(port=0), registry, Invoker(registry), ChannelTable())
    async with trio.open_nursery() as nursery:
        port = await nursery.start(http.run)
        yield port
        nursery.cancel_scope.cancel()


def _expect(client: h11.Connection) -> None:
    # a client-side h11 connection parses a response only to a request it has sent
    client.send(h11.Request(method="GET", target="/nope", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())


async def read_responses(stream: trio.SocketStream, count: int) -> list[int]:
    client = h11.Connection(h11.CLIENT)
    _expect(client)
    statuses: list[int] = []
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            statuses.append(event.status_code)
        elif isinstance(event, h11.EndOfMessage):
            if len(statuses) == count:
                return statuses
            client.start_next_cycle()
            _expect(client)


async def test_a_pipelining_client_that_never_pauses_does_not_starve_others() -> None:
    requests = 200
    with trio.fail_after(10):
        async with front() as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            steps = 0
            done = trio.Event()

            async def other_task() -> None:  # stands for every other connection and worker
                nonlocal steps
                while not done.is_set():
                    steps += 1
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(other_task)
                # all the requests in one write: the front finds them all already buffered, and
                # answers each (404) without ever having to wait
                await stream.send_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" * requests)
                statuses = await read_responses(stream, requests)
                done.set()
            await stream.aclose()
            assert statuses == [404] * requests
            # the front yielded once per request: the other task ran about as often
            assert steps >= requests // 2, steps


async def _status_of(stream: trio.SocketStream) -> int | None:
    """The status of the one response the front sends before closing, or None if it just closed."""
    data = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


async def test_a_head_trickled_byte_by_byte_is_timed_out_as_a_whole() -> None:
    registry = Registry()
    http = HttpFront(HttpConfig(port=0, header_timeout=0.5), registry, Invoker(registry), ChannelTable())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(http.run)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200

            async def trickle() -> None:
                for byte in head:  # one byte every 50 ms: each read well inside header_timeout
                    try:
                        await stream.send_all(bytes([byte]))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    await trio.sleep(0.05)

            nursery.start_soon(trickle)
            status = await _status_of(stream)
            elapsed = trio.current_time() - started
            assert status == 408
            assert elapsed < 2.0, elapsed  # the head's total deadline, not an idle time reset per byte
            nursery.cancel_scope.cancel()


async def test_connections_per_client_are_capped_and_refusals_logged_at_a_bounded_rate(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()
    http = HttpFront(HttpConfig(port=0, max_connections_per_client=2), registry, Invoker(registry), ChannelTable())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(http.run)
            held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            while http._live < 2:  # the front has accepted them
                await trio.sleep(0.005)
            caplog.clear()
            statuses = []
            for _ in range(20):
                extra = await trio.open_tcp_stream("127.0.0.1", port)
                statuses.append(await _status_of(extra))
                await extra.aclose()
            assert statuses == [503] * 20
            refused = [r for r in caplog.records if "refused a connection" in r.getMessage()]
            assert len(refused) == 1, [r.getMessage() for r in refused]
            assert "127.0.0.1" in refused[0].getMessage() and "max_connections_per_client" in refused[0].getMessage()
            # the held ones still work; closing one frees its slot
            await held[0].send_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert await _status_of(held[0]) == 404
            await held[0].aclose()
            while http._live > 1:
                await trio.sleep(0.005)
            again = await trio.open_tcp_stream("127.0.0.1", port)
            await again.send_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert await _status_of(again) == 404
            nursery.cancel_scope.cancel()


async def test_a_request_that_cannot_be_sent_to_its_worker_gets_413_and_leaks_no_channel() -> None:
    # a JSON body re-encoded grows (1E9 → 1000000000.0): under the body limit, over the frame
    frame = 1024 * 1024
    config = {"supervisor": {"max_frame_size": frame, "max_queued_bytes": frame},
              "http": {"port": 0, "max_body_size": 700 * 1024}}
    with trio.fail_after(10):
        async with engine_parts(modules=[http_module.SPEC], config=config) as parts:
            worker = await parts.worker("api")

            async def echo(data: Any) -> dict[str, Any]:
                return {"status_code": 200, "body": {"n": len(data["body"] or [])}}

            await worker.register_function("api.echo", echo)
            await worker.register_trigger("http", "api.echo", {"api_path": "/echo", "http_method": "POST"})
            port = parts.modules["http"].port  # type: ignore[attr-defined]
            body = b"[" + b",".join([b"1E9"] * 170_000) + b"]"
            assert len(body) < 700 * 1024
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                big = await client.post("/echo", content=body, headers={"content-type": "application/json"})
                assert big.status_code == 413, big.text
                assert big.json()["error"]["code"] == "request_too_large"
                small = await client.post("/echo", json=[1, 2, 3])
                assert small.status_code == 200 and small.json() == {"n": 3}
            assert len(parts.channels) == 0 and parts.invoker.pending == {}
            assert not worker.session.closed.is_set()


async def test_trickled_heads_cost_one_timer_entry_per_connection() -> None:
    registry = Registry()
    http = HttpFront(HttpConfig(port=0, header_timeout=5), registry, Invoker(registry), ChannelTable())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(http.run)
            streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(10)]
            for _ in range(100):  # 1,000 reads in all, each a piece of a head that never ends
                for stream in streams:
                    await stream.send_all(b"G")
                await trio.sleep(0.002)
            assert len(http._timer) <= 2 * len(streams), len(http._timer)
            for stream in streams:
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_handler_result_that_cannot_be_rendered_is_answered_500_not_dropped() -> None:
    # a built-in's result is a Python value (not from JSON): a set, or a bad status, must give
    # 500 invalid_response (a worker's too deep result: test_http_messages)
    with trio.fail_after(10):
        async with engine_parts(modules=[http_module.SPEC], config={"http": {"port": 0}}) as parts:
            worker = await parts.worker("api")

            async def not_json(_data: Any) -> Any:
                return {"status_code": 200, "body": {1, 2}}

            async def bare_set(_data: Any) -> Any:
                return {1, 2}

            async def bad_status(_data: Any) -> Any:
                return {"status_code": 99}

            parts.registry.add_builtin("b.not_json", not_json, "")
            parts.registry.add_builtin("b.bare_set", bare_set, "")
            parts.registry.add_builtin("b.bad_status", bad_status, "")
            for fid in ("b.not_json", "b.bare_set", "b.bad_status"):
                await worker.register_trigger("http", fid, {"api_path": "/" + fid})
            port = parts.modules["http"].port  # type: ignore[attr-defined]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for fid, says in [("b.not_json", "set"), ("b.bare_set", "set"), ("b.bad_status", "got 99")]:
                    r = await client.get("/" + fid)
                    assert r.status_code == 500, (fid, r.status_code)
                    err = r.json()["error"]
                    assert err["code"] == "invalid_response", err
                    assert says in err["message"], err
            assert len(parts.channels) == 0 and parts.invoker.pending == {}
