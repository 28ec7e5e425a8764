"""The worker SDK's connection logic in process: the client's loop runs in the test's trio run
(no thread) against a fake supervisor end over a socket pair; deadlines on the autojump clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from iii_supervisor.errors import InvocationTimeout
from iii_supervisor.protocol import (
    Hello,
    InvocationResult,
    InvokeFunction,
    WorkerRegistered,
)
from iii_supervisor.transport import FramedStream
from iii_supervisor.worker.client import III, InitOptions


class InLoopIII(III):
    """The client without its thread: the test runs ``_serve_stream`` itself."""

    def _start(self) -> None:
        pass

    def _supervisor_gone(self) -> None:
        pass  # (the real client exits the process)


class FakeSupervisor:
    """Accepts the hello, records the calls it gets, answers them only when told to."""

    def __init__(self, framed: FramedStream) -> None:
        self.framed = framed
        self.calls: list[InvokeFunction] = []
        self.call_arrived = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        hello = await self.framed.receive()
        assert isinstance(hello, Hello)
        self.framed.send_nowait(WorkerRegistered(worker_id="w-1", name="w"))
        task_status.started()
        async for event in self.framed.events():
            if isinstance(event, InvokeFunction):
                self.calls.append(event)
                self.call_arrived.set()

    def answer(self, call: InvokeFunction, result: Any) -> None:
        assert call.invocation_id is not None
        self.framed.send_nowait(InvocationResult(invocation_id=call.invocation_id, function_id=call.function_id,
                                                 result=result))


@asynccontextmanager
async def connected(options: InitOptions | None = None) -> AsyncIterator[tuple[III, FakeSupervisor]]:
    ours, theirs = trio.socket.socketpair()
    client = InLoopIII("(socketpair)", "t" * 43, "w", options)
    supervisor = FakeSupervisor(FramedStream(trio.SocketStream(theirs)))
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.framed.run_writer)
        nursery.start_soon(supervisor.run)
        await nursery.start(client._serve_stream, trio.SocketStream(ours))
        yield client, supervisor
        nursery.cancel_scope.cancel()


async def test_trigger_gives_up_at_timeout_ms_plus_the_margin(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):  # virtual seconds
        async with connected() as (client, supervisor):
            start = trio.current_time()
            with pytest.raises(InvocationTimeout) as info:
                await client.trigger_async({"function_id": "other.work", "payload": {"n": 1}, "timeout_ms": 2000})
            assert trio.current_time() - start == pytest.approx(7.0)  # 2 s + the 5 s margin
            assert info.value.code == "invocation_timeout"
            assert "'other.work'" in info.value.message
            assert "within 7s" in info.value.message and "timeout_ms 2000" in info.value.message
            [call] = supervisor.calls
            assert call.timeout_ms == 2000  # the supervisor still gets (and enforces) the call's own deadline
            # the lost answer turns up after all: dropped quietly, and the client keeps working
            supervisor.answer(call, "late")
            supervisor.call_arrived = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_when_asked, supervisor, "on time")
                assert await client.trigger_async({"function_id": "other.work"}) == "on time"
            assert not client._waiters


async def answer_when_asked(supervisor: FakeSupervisor, result: Any) -> None:
    await supervisor.call_arrived.wait()
    await trio.sleep(29)  # just within the default 30 s
    supervisor.answer(supervisor.calls[-1], result)


async def test_the_default_deadline_is_the_default_timeout_plus_the_margin(
        autojump_clock: trio.testing.MockClock) -> None:
    options = InitOptions(invocation_timeout_ms=10_000, trigger_deadline_margin=2.5)
    with trio.fail_after(60):
        async with connected(options) as (client, supervisor):
            start = trio.current_time()
            with pytest.raises(InvocationTimeout, match=r"'svc.f' within 12.5s \(its timeout_ms 10000 plus a 2.5s"):
                await client.trigger_async({"function_id": "svc.f"})
            assert trio.current_time() - start == pytest.approx(12.5)
            assert supervisor.calls[0].timeout_ms == 10_000


@pytest.mark.parametrize("timeout_ms", ["5", -1, 1.5, True])
async def test_a_bad_timeout_ms_is_refused_before_sending(timeout_ms: Any) -> None:
    with trio.fail_after(5):
        async with connected() as (client, supervisor):
            with pytest.raises(ValueError, match=f"timeout_ms.*got {timeout_ms!r}"):
                await client.trigger_async({"function_id": "svc.f", "timeout_ms": timeout_ms})
            await trio.testing.wait_all_tasks_blocked()
            assert supervisor.calls == []
