"""The HTTP front in this process, over real loopback sockets, for what is about scheduling
(and so easier to observe from inside the event loop than from another process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import trio

from iii_supervisor.server.http.config import HttpConfig
from iii_supervisor.channels import ChannelTable
from iii_supervisor.invocation import Invoker
from iii_supervisor.registry import Registry
from iii_supervisor.server.http.front import HttpFront


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
