"""The worker socket before authentication (iii_supervisor.server.sockets), in process: a real
Unix socket served by a real SessionServer, a fake pool, raw clients. No worker processes."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from iii_supervisor.channels import ChannelTable
from iii_supervisor.errors import ConnectionLost
from iii_supervisor.invocation import Invoker
from iii_supervisor.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    Error,
    FunctionRegistered,
    Hello,
    RegisterFunction,
    WorkerRegistered,
)
from iii_supervisor.protocol.codec import encode
from iii_supervisor.protocol.frames import HEADER
from iii_supervisor.registry import Registry
from iii_supervisor.server import sockets
from iii_supervisor.server.sockets import SessionServer, SocketLimits, serve_unix
from iii_supervisor.transport import FramedStream

TOKEN = "t" * 43


@attrs.define
class FakeSpec:
    name: str = "w"


@attrs.define
class FakeSlot:
    name: str = "w"
    pid: int | None = None
    session: Any = None
    spec: FakeSpec = attrs.Factory(FakeSpec)


class FakePool:
    def __init__(self) -> None:
        self.slot = FakeSlot()

    def authenticate(self, token: str) -> FakeSlot | None:
        return self.slot if token == TOKEN else None

    def attach(self, slot: FakeSlot, session: Any) -> None:
        slot.session = session

    def detach(self, slot: FakeSlot, session: Any) -> None:
        if slot.session is session:
            slot.session = None


@attrs.define
class Served:
    path: Path
    server: SessionServer


@asynccontextmanager
async def worker_socket(**limits: Any) -> AsyncIterator[Served]:
    directory = Path(tempfile.mkdtemp(prefix="iii-s"))  # AF_UNIX paths are short: not tmp_path
    path = directory / "iii.sock"
    registry = Registry()
    invoker = Invoker(registry)
    socket_limits = SocketLimits(max_frame_size=DEFAULT_MAX_FRAME_SIZE, **limits)  # 16 MiB
    server = SessionServer(registry, invoker, ChannelTable(), FakePool(), socket_limits)  # type: ignore[arg-type]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(invoker.run)
            await nursery.start(serve_unix, path, server.handle_worker, socket_limits)
            yield Served(path, server)
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def read_error(stream: trio.SocketStream, *, then_closed: bool = True) -> Error:
    """The error frame the supervisor sends, and (``then_closed``) the end of the connection."""
    framed = FramedStream(stream)
    event = await framed.receive()
    assert isinstance(event, Error), event
    if then_closed:
        with pytest.raises(ConnectionLost):
            await framed.receive()
    return event


async def test_a_16_mib_frame_before_hello_is_refused_on_its_header() -> None:
    with trio.fail_after(10):
        # a long handshake timeout: a refusal within the test's deadline cannot be the timeout
        async with worker_socket(handshake_timeout=60) as served:
            stream = await trio.open_unix_socket(str(served.path))
            # announce 16 MiB (the configured limit: fine after authentication) and send nothing
            # more: the supervisor must not wait to buffer it
            await stream.send_all(HEADER.pack(16 * 1024 * 1024) + b"{")
            error = await read_error(stream)
            assert error.error.code == "frame_too_large"
            assert "16777216" in error.error.message
            assert "before authentication" in error.error.message
            assert "4096" in error.error.message
            await stream.aclose()


async def test_a_hello_just_over_the_small_limit_is_refused() -> None:
    with trio.fail_after(10):
        async with worker_socket(hello_max_frame_size=256) as served:
            stream = await trio.open_unix_socket(str(served.path))
            await stream.send_all(encode(Hello(token=TOKEN, name="x" * 300)))
            error = await read_error(stream)
            assert error.error.code == "frame_too_large"
            await stream.aclose()


async def test_after_authentication_the_configured_frame_size_applies() -> None:
    with trio.fail_after(10):
        async with worker_socket() as served:
            stream = await trio.open_unix_socket(str(served.path))
            framed = FramedStream(stream)
            async with trio.open_nursery() as nursery:
                await nursery.start(framed.run_writer)
                framed.send_nowait(Hello(token=TOKEN, name="w"))
                assert isinstance(await framed.receive(), WorkerRegistered)
                big = {"blob": "x" * 200_000}  # 50x the pre-authentication limit
                framed.send_nowait(RegisterFunction(id="w.big", metadata=big))
                ack = await framed.receive()
                assert isinstance(ack, FunctionRegistered) and ack.error is None
                assert served.server.registry.functions["w.big"].metadata == big
                nursery.cancel_scope.cancel()
            await stream.aclose()


async def test_unauthenticated_connections_are_capped(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(20):
        async with worker_socket(max_pending_handshakes=8, handshake_timeout=60) as served:
            silent = [await trio.open_unix_socket(str(served.path)) for _ in range(8)]
            while served.server.pending_handshakes < 8:  # the accept loop counts them
                await trio.sleep(0.005)
            # one more: refused at once, with an error that says why
            extra = await trio.open_unix_socket(str(served.path))
            error = await read_error(extra)
            assert error.error.code == "too_many_handshakes"
            assert "too many connections waiting to authenticate (8)" in error.error.message
            await extra.aclose()
            # one of the silent ones leaves: a real worker gets in again
            await silent.pop().aclose()
            while served.server.pending_handshakes > 7:
                await trio.sleep(0.005)
            stream = await trio.open_unix_socket(str(served.path))
            framed = FramedStream(stream)
            async with trio.open_nursery() as nursery:
                await nursery.start(framed.run_writer)
                framed.send_nowait(Hello(token=TOKEN, name="w"))
                assert isinstance(await framed.receive(), WorkerRegistered)
                assert served.server.pending_handshakes == 7  # an authenticated one no longer counts
                nursery.cancel_scope.cancel()
            await stream.aclose()
            for s in silent:
                await s.aclose()
            while served.server.pending_handshakes:
                await trio.sleep(0.005)


async def test_a_flood_of_bad_tokens_logs_one_line_and_a_count(caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(sockets.REFUSED_WARNINGS.limiter, "clock", lambda: clock[0])
    monkeypatch.setattr(sockets.REFUSED_WARNINGS.limiter, "_windows", type(sockets.REFUSED_WARNINGS.limiter._windows)())
    with caplog.at_level(logging.WARNING, "iii_supervisor.server.sockets"), trio.fail_after(20):
        async with worker_socket() as served:
            for i in range(50):
                stream = await trio.open_unix_socket(str(served.path))
                await stream.send_all(encode(Hello(token=f"bad{i}")))
                assert (await read_error(stream)).error.code == "auth_failed"
                await stream.aclose()
            clock[0] = 10.0
            sockets.REFUSED_WARNINGS.flush()
    lines = [r.getMessage() for r in caplog.records if r.name == "iii_supervisor.server.sockets"]
    assert lines == [
        "worker socket: refused a connection: invalid worker token: only workers spawned by this supervisor "
        "may connect",
        "worker socket: refused connections: 49 similar line(s) suppressed in the last 10s",
    ]
