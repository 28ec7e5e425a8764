"""Unit tests of iii_supervisor.invocation.Invoker with fake peers: no sockets, no processes.

Each test runs the invoker in a nursery (``await n.start(invoker.run)``) and cancels it at the end.
Deadline tests use pytest-trio's ``autojump_clock`` so virtual time passes instantly.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from iii_supervisor.errors import (
    FunctionNotFound,
    InvocationError,
    InvocationFailed,
    InvocationStopped,
    InvocationTimeout,
    WorkerOverloaded,
)
from iii_supervisor.invocation import Invoker
from iii_supervisor.protocol import Action, ErrorBody, InvocationResult, InvokeFunction, Message
from iii_supervisor.registry import FunctionEntry, Registry


class FakePeer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Message] = []
        self.queued = 0  # what backlog() reports

    def send_nowait(self, msg: Message) -> None:
        self.sent.append(msg)

    def backlog(self) -> int:
        return self.queued

    def __repr__(self) -> str:
        return f"FakePeer({self.name!r})"


@asynccontextmanager
async def running(invoker: Invoker) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        await n.start(invoker.run)
        yield n
        n.cancel_scope.cancel()


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def a() -> FakePeer:
    return FakePeer("worker-a")


@pytest.fixture
def b(registry: Registry) -> FakePeer:
    peer = FakePeer("worker-b")
    registry.add_function(FunctionEntry("b.work", peer))
    return peer


@pytest.fixture
def invoker(registry: Registry) -> Invoker:
    return Invoker(registry)


def only(peer: FakePeer, cls: type) -> Any:
    assert len(peer.sent) == 1, peer.sent
    msg = peer.sent[0]
    assert isinstance(msg, cls), msg
    return msg


# --- relay: worker → worker --------------------------------------------------------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_every_forwarded_call_carries_a_valid_traceparent(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    from iii_supervisor.tracing import parse_traceparent

    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1"))  # none: a new trace
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-2", traceparent="garbage"))
            first, second = [m for m in b.sent if isinstance(m, InvokeFunction)]
            assert parse_traceparent(first.traceparent) is not None
            assert parse_traceparent(second.traceparent) is not None and second.traceparent != first.traceparent



async def test_route_forwards_with_fresh_engine_id(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="b.work", data={"x": 1}, invocation_id="a-1",
                                            metadata={"k": "v"}, traceparent=TRACEPARENT))
            fwd = only(b, InvokeFunction)
            assert fwd.function_id == "b.work"
            assert fwd.data == {"x": 1}
            assert fwd.metadata == {"k": "v"} and fwd.traceparent == TRACEPARENT
            assert fwd.invocation_id is not None and fwd.invocation_id != "a-1"
            assert fwd.invocation_id in invoker.pending
            assert invoker.executing(b) == {fwd.invocation_id}
            assert invoker.started_by(a) == {fwd.invocation_id}
            assert a.sent == []

            # a second call from A with the same caller id gets another engine id
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1"))
            assert b.sent[1].invocation_id not in (None, fwd.invocation_id)


async def test_result_is_relayed_under_callers_id(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="b.work", data=2, invocation_id="a-42"))
            engine_id = only(b, InvokeFunction).invocation_id
            invoker.on_result(b, InvocationResult(invocation_id=engine_id, function_id="b.work", result={"y": 4}))
            res = only(a, InvocationResult)
            assert res.invocation_id == "a-42"
            assert res.function_id == "b.work"
            assert res.result == {"y": 4} and res.error is None
            assert invoker.pending == {}
            assert invoker.started_by(a) == set() and invoker.executing(b) == set()

            # a duplicate result is dropped
            invoker.on_result(b, InvocationResult(invocation_id=engine_id, result="again"))
            assert len(a.sent) == 1


async def test_error_result_is_relayed(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1"))
            engine_id = only(b, InvokeFunction).invocation_id
            err = ErrorBody(code="invocation_failed", message="boom", stacktrace="tb")
            invoker.on_result(b, InvocationResult(invocation_id=engine_id, error=err))
            res = only(a, InvocationResult)
            assert res.invocation_id == "a-1" and res.error == err


async def test_function_not_found_answered_immediately(invoker: Invoker, a: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="nope.missing", invocation_id="a-7"))
            res = only(a, InvocationResult)
            assert res.invocation_id == "a-7"
            assert res.error is not None and res.error.code == "function_not_found"
            assert "nope.missing" in res.error.message
            assert invoker.pending == {}


async def test_void_call_forwarded_without_id(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="b.work", data="fire", action=Action(type="void")))
            fwd = only(b, InvokeFunction)
            assert fwd.invocation_id is None and fwd.data == "fire"
            assert invoker.pending == {}
            assert invoker.executing(b) == set() and invoker.started_by(a) == set()
            assert a.sent == []


async def test_void_call_to_missing_function_sends_nothing(invoker: Invoker, a: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="missing"))
            assert a.sent == [] and invoker.pending == {}


async def test_enqueue_action_answered_with_enqueue_error(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1",
                                            action=Action(type="enqueue", queue="jobs")))
            res = only(a, InvocationResult)
            assert res.invocation_id == "a-1"
            assert res.error is not None and res.error.code == "enqueue_error"
            assert "jobs" in res.error.message
            assert b.sent == [] and invoker.pending == {}


async def test_target_closing_fails_pending_call(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1"))
            invoker.session_closed(b)
            res = only(a, InvocationResult)  # at once: no waiting for the deadline
            assert res.invocation_id == "a-1"
            assert res.error is not None and res.error.code == "invocation_stopped"
            assert "worker-b" in res.error.message and "b.work" in res.error.message
            assert invoker.pending == {}
            assert invoker.started_by(a) == set() and invoker.executing(b) == set()


async def test_caller_closing_drops_pending_and_late_result(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1"))
            engine_id = only(b, InvokeFunction).invocation_id
            invoker.session_closed(a)
            assert invoker.pending == {}
            assert invoker.executing(b) == set() and invoker.started_by(a) == set()
            invoker.on_result(b, InvocationResult(invocation_id=engine_id, result="late"))
            assert a.sent == []


async def test_result_from_non_target_is_ignored(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    c = FakePeer("worker-c")
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1"))
            engine_id = only(b, InvokeFunction).invocation_id
            invoker.on_result(c, InvocationResult(invocation_id=engine_id, result="forged"))
            invoker.on_result(a, InvocationResult(invocation_id=engine_id, result="forged"))
            assert a.sent == []
            assert engine_id in invoker.pending
            invoker.on_result(b, InvocationResult(invocation_id=engine_id, result="real"))
            assert only(a, InvocationResult).result == "real"


async def test_result_with_unknown_or_missing_id_is_ignored(invoker: Invoker, a: FakePeer, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            invoker.on_result(b, InvocationResult(invocation_id="999", result=1))
            invoker.on_result(b, InvocationResult(invocation_id=None, result=1))
            assert a.sent == [] and b.sent == []


# --- deadlines (virtual time) -----------------------------------------------------------------


async def test_unanswered_call_times_out(invoker: Invoker, a: FakePeer, b: FakePeer, autojump_clock: Any) -> None:
    async with running(invoker):
        with trio.fail_after(5):
            t0 = trio.current_time()
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1", timeout_ms=100))
            engine_id = only(b, InvokeFunction).invocation_id
            await trio.sleep(0.099)
            assert a.sent == []
            await trio.sleep(0.002)
            res = only(a, InvocationResult)
            assert res.invocation_id == "a-1"
            assert res.error is not None and res.error.code == "invocation_timeout"
            assert "b.work" in res.error.message
            assert trio.current_time() - t0 < 0.2
            assert invoker.pending == {} and invoker.executing(b) == set() and invoker.started_by(a) == set()
            # the worker's answer after the deadline is dropped
            invoker.on_result(b, InvocationResult(invocation_id=engine_id, result="late"))
            assert len(a.sent) == 1


async def test_default_timeout_applies(registry: Registry, a: FakePeer, b: FakePeer, autojump_clock: Any) -> None:
    invoker = Invoker(registry, default_timeout=2.0)
    async with running(invoker):
        with trio.fail_after(5):
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1"))
            await trio.sleep(1.9)
            assert a.sent == []
            await trio.sleep(0.2)
            assert only(a, InvocationResult).error.code == "invocation_timeout"


async def test_earlier_deadline_pushed_later_fires_first(invoker: Invoker, a: FakePeer, b: FakePeer,
                                                          autojump_clock: Any) -> None:
    async with running(invoker):
        with trio.fail_after(5):
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="slow", timeout_ms=3000))
            await trio.sleep(0)  # the timer task is now asleep until the 3 s deadline
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="fast", timeout_ms=100))
            await trio.sleep(0.15)
            res = only(a, InvocationResult)
            assert res.invocation_id == "fast" and res.error.code == "invocation_timeout"
            assert len(invoker.pending) == 1
            await trio.sleep(3.0)
            assert [m.invocation_id for m in a.sent] == ["fast", "slow"]
            assert invoker.pending == {}


async def test_answered_call_does_not_time_out_later(invoker: Invoker, a: FakePeer, b: FakePeer,
                                                      autojump_clock: Any) -> None:
    async with running(invoker):
        with trio.fail_after(5):
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-1", timeout_ms=100))
            invoker.on_result(b, InvocationResult(invocation_id=only(b, InvokeFunction).invocation_id, result=1))
            await trio.sleep(1)
            assert len(a.sent) == 1 and a.sent[0].error is None


# --- Invoker.call (in-process caller) ----------------------------------------------------------


async def test_call_returns_result(invoker: Invoker, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker) as n:
            async def answer() -> None:
                while not b.sent:
                    await trio.sleep(0)
                fwd = b.sent[0]
                assert isinstance(fwd, InvokeFunction) and fwd.data == {"q": 1}
                invoker.on_result(b, InvocationResult(invocation_id=fwd.invocation_id, result={"a": 2}))

            n.start_soon(answer)
            assert await invoker.call("b.work", {"q": 1}) == {"a": 2}
            assert invoker.pending == {} and invoker.executing(b) == set()


async def test_call_error_result_raises_matching_class(invoker: Invoker, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker) as n:
            async def answer() -> None:
                while not b.sent:
                    await trio.sleep(0)
                invoker.on_result(b, InvocationResult(invocation_id=b.sent[0].invocation_id,
                                                      error=ErrorBody(code="invocation_failed", message="boom")))

            n.start_soon(answer)
            with pytest.raises(InvocationFailed, match="boom"):
                await invoker.call("b.work")


async def test_call_missing_function_raises(invoker: Invoker) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            with pytest.raises(FunctionNotFound, match="ghost"):
                await invoker.call("ghost")


async def test_call_raises_stopped_when_target_closes(invoker: Invoker, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker) as n:
            async def close() -> None:
                while not b.sent:
                    await trio.sleep(0)
                invoker.session_closed(b)

            n.start_soon(close)
            with pytest.raises(InvocationStopped) as info:
                await invoker.call("b.work")
            assert info.value.code == "invocation_stopped"
            assert "worker-b" in info.value.message
            assert invoker.pending == {}


async def test_call_times_out(invoker: Invoker, b: FakePeer, autojump_clock: Any) -> None:
    async with running(invoker):
        with trio.fail_after(5):
            t0 = trio.current_time()
            with pytest.raises(InvocationTimeout):
                await invoker.call("b.work", timeout=0.5)
            assert math.isclose(trio.current_time() - t0, 0.5, abs_tol=1e-6)
            assert invoker.pending == {} and invoker.executing(b) == set()


async def test_cancelled_call_is_forgotten(invoker: Invoker, b: FakePeer) -> None:
    with trio.fail_after(5):
        async with running(invoker):
            with trio.move_on_after(0.01):
                await invoker.call("b.work")
            assert invoker.pending == {} and invoker.executing(b) == set()


# --- built-ins ---------------------------------------------------------------------------------


async def double(data: Any) -> Any:
    await trio.sleep(0)
    return data * 2


async def broken(data: Any) -> Any:
    raise RuntimeError("kaput")


async def test_builtin_via_call(invoker: Invoker, registry: Registry) -> None:
    registry.add_builtin("engine.double", double, "doubles")
    with trio.fail_after(5):
        async with running(invoker):
            assert await invoker.call("engine.double", 21) == 42


async def test_builtin_via_route_answers_caller(invoker: Invoker, registry: Registry, a: FakePeer) -> None:
    registry.add_builtin("engine.double", double, "doubles")
    with trio.fail_after(5):
        async with running(invoker):
            invoker.route(a, InvokeFunction(function_id="engine.double", data=5, invocation_id="a-9"))
            while not a.sent:
                await trio.sleep(0)
            res = only(a, InvocationResult)
            assert res.invocation_id == "a-9" and res.result == 10 and res.error is None
            assert invoker.pending == {}


async def test_builtin_raising_yields_invocation_failed(invoker: Invoker, registry: Registry, a: FakePeer,
                                                       b: FakePeer) -> None:
    registry.add_builtin("engine.broken", broken, "always fails")
    registry.add_builtin("engine.double", double, "doubles")
    with trio.fail_after(5):
        async with running(invoker):
            with pytest.raises(InvocationError) as info:
                await invoker.call("engine.broken")
            assert isinstance(info.value, InvocationFailed)
            assert info.value.code == "invocation_failed"
            assert "kaput" in info.value.message and "RuntimeError" in info.value.message
            assert info.value.stacktrace and "kaput" in info.value.stacktrace

            invoker.route(a, InvokeFunction(function_id="engine.broken", invocation_id="a-1"))
            while not a.sent:
                await trio.sleep(0)
            res = only(a, InvocationResult)
            assert res.invocation_id == "a-1"
            assert res.error is not None and res.error.code == "invocation_failed" and "kaput" in res.error.message

            # the invoker is still alive: built-ins and relays keep working
            assert await invoker.call("engine.double", 4) == 8
            invoker.route(a, InvokeFunction(function_id="b.work", invocation_id="a-2", timeout_ms=50))
            assert len(b.sent) == 1
            invoker.on_result(b, InvocationResult(invocation_id=b.sent[0].invocation_id, result="ok"))
            assert a.sent[-1].result == "ok"


async def test_builtin_timeout(invoker: Invoker, registry: Registry, autojump_clock: Any) -> None:
    async def hang(data: Any) -> Any:
        await trio.sleep_forever()

    registry.add_builtin("engine.hang", hang, "never answers")
    async with running(invoker):
        with trio.fail_after(5):
            with pytest.raises(InvocationTimeout, match="engine.hang"):
                await invoker.call("engine.hang", timeout=1.0)


# --- a worker that stopped reading ----------------------------------------------------------


async def test_calls_to_a_worker_with_a_full_backlog_fail_at_once(registry: Registry, a: FakePeer,
                                                                  b: FakePeer) -> None:
    with trio.fail_after(5):
        invoker = Invoker(registry, max_backlog=1000)
        registry.add_function(FunctionEntry("b.fn", b))
        async with running(invoker):
            b.queued = 1001
            # relayed call: the caller is answered, nothing is queued for b
            invoker.route(a, InvokeFunction(function_id="b.fn", data=1, invocation_id="c1"))
            assert b.sent == [] and not invoker.pending
            (answer,) = a.sent
            assert isinstance(answer, InvocationResult) and answer.invocation_id == "c1"
            assert answer.error is not None and answer.error.code == "worker_overloaded"
            assert "worker-b" in answer.error.message and "1001 bytes" in answer.error.message
            # a void call is dropped too
            invoker.route(a, InvokeFunction(function_id="b.fn", data=2))
            assert b.sent == [] and len(a.sent) == 1
            # a local call raises the matching class
            with pytest.raises(WorkerOverloaded):
                await invoker.call("b.fn", 3)
            assert b.sent == [] and not invoker.pending
            # once the socket took it, calls go through again
            b.queued = 1000
            invoker.route(a, InvokeFunction(function_id="b.fn", data=4, invocation_id="c2"))
            assert [type(m) for m in b.sent] == [InvokeFunction]
