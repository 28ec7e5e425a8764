"""The pub/sub module in process: fake workers over socket pairs, the real session and invoker."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from iii_supervisor.errors import InvocationError, TriggerRegistrationError
from iii_supervisor.modules import pubsub
from iii_supervisor.protocol import InvokeFunction
from inprocess import engine_parts


def recorder() -> tuple[list[Any], trio.MemoryReceiveChannel[Any], Any]:
    got: list[Any] = []
    send, receive = trio.open_memory_channel[Any](100)

    async def handler(data: Any) -> None:
        got.append(data)
        send.send_nowait(data)

    return got, receive, handler


async def test_publish_fans_out_to_every_binding_and_returns_null() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[pubsub.SPEC]) as parts:
            a, b, c = await parts.worker("a"), await parts.worker("b"), await parts.worker("c")
            got_a, recv_a, handler_a = recorder()
            got_b, recv_b, handler_b = recorder()
            got_c, _recv_c, handler_c = recorder()
            await a.register_function("a.on", handler_a)
            await b.register_function("b.on", handler_b)
            await c.register_function("c.on", handler_c)
            await a.register_trigger("subscribe", "a.on", {"topic": "orders"})
            await a.register_trigger("subscribe", "a.on", {"topic": "orders"})  # a second binding: twice
            await b.register_trigger("subscribe", "b.on", {"topic": "orders"})
            await c.register_trigger("subscribe", "c.on", {"topic": "payments"})
            assert await c.call("publish", {"topic": "orders", "data": {"id": 1}}) is None
            assert await recv_b.receive() == {"id": 1}
            assert [await recv_a.receive(), await recv_a.receive()] == [{"id": 1}, {"id": 1}]
            # a void publish (TriggerAction.Void) works the same; data may be absent (null)
            c.send(InvokeFunction(function_id="publish", data={"topic": "orders"}))
            assert await recv_b.receive() is None
            assert got_c == []
            stats = await parts.invoker.call("engine::pubsub::stats", {})
            assert stats["published"] == 2
            orders = next(t for t in stats["topics"] if t["topic"] == "orders")
            assert sorted(s["function_id"] for s in orders["subscribers"]) == ["a.on", "a.on", "b.on"]
            with pytest.raises(InvocationError) as info:
                await c.call("publish", {"topic": "", "data": 1})
            assert info.value.code == "topic_not_set"


async def test_bad_configs_are_refused_with_the_reason() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[pubsub.SPEC]) as parts:
            w = await parts.worker("w")
            await w.register_function("w.on", recorder()[2])
            for config, words in [({}, "config.topic is required"), ({"topic": 7}, "got 7"),
                                  ({"topic": "t", "colour": "red"}, "unknown config key(s) 'colour'")]:
                with pytest.raises(TriggerRegistrationError) as info:
                    await w.register_trigger("subscribe", "w.on", config)
                assert words in info.value.message
            assert parts.registry.list_triggers() == []


async def test_slow_and_failing_subscribers_affect_nobody_else() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[pubsub.SPEC], config={
                "pubsub": {"max_in_flight_per_subscriber": 2}}) as parts:
            w = await parts.worker("w")
            release = trio.Event()
            slow_calls = 0

            async def slow(_data: Any) -> None:
                nonlocal slow_calls
                slow_calls += 1
                await release.wait()

            async def failing(_data: Any) -> None:
                raise RuntimeError("boom")

            got, recv, fast = recorder()
            await w.register_function("w.slow", slow)
            await w.register_function("w.fail", failing)
            await w.register_function("w.fast", fast)
            for fn in ("w.slow", "w.fail", "w.fast"):
                await w.register_trigger("subscribe", fn, {"topic": "t"})
            for i in range(5):
                assert await w.call("publish", {"topic": "t", "data": i}) is None  # never waits for slow
            assert sorted([await recv.receive() for _ in range(5)]) == [0, 1, 2, 3, 4]
            module = parts.modules["pubsub"]
            by_fn = {b.function_id: b for b in module.fanout.bindings("t")}  # type: ignore[attr-defined]
            while by_fn["w.fail"].failed < 5:
                await trio.sleep(0.01)
            assert (by_fn["w.slow"].in_flight, by_fn["w.slow"].dropped) == (2, 3)
            assert slow_calls == 2 and by_fn["w.fast"].dropped == 0
            release.set()
            while module.fanout.in_flight:  # type: ignore[attr-defined]
                await trio.sleep(0.01)
            assert by_fn["w.slow"].delivered == 2


async def test_condition_unbinding_and_worker_exit() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[pubsub.SPEC]) as parts:
            w = await parts.worker("w")
            got, recv, handler = recorder()

            async def only_big(data: Any) -> bool:
                return data > 10

            await w.register_function("w.on", handler)
            await w.register_function("w.big", only_big)
            trigger = await w.register_trigger("subscribe", "w.on", {"topic": "n", "condition_function_id": "w.big"})
            await w.call("publish", {"topic": "n", "data": 1})
            await w.call("publish", {"topic": "n", "data": 50})
            assert await recv.receive() == 50
            binding = parts.modules["pubsub"].fanout.bindings("n")[0]  # type: ignore[attr-defined]
            while binding.skipped + binding.delivered < 2:
                await trio.sleep(0.01)
            assert (binding.skipped, binding.delivered) == (1, 1) and got == [50]
            w.unregister_trigger(trigger)
            other = await parts.worker("o")
            await other.register_function("o.on", recorder()[2])
            await other.register_trigger("subscribe", "o.on", {"topic": "n"})
            stats = await parts.invoker.call("engine::pubsub::stats", {})
            assert [s["function_id"] for t in stats["topics"] for s in t["subscribers"]] == ["o.on"]
            other.session.close()  # the worker leaves: its binding goes with it
            while parts.modules["pubsub"].fanout.topics:  # type: ignore[attr-defined]
                await trio.sleep(0.01)
            assert await w.call("publish", {"topic": "n", "data": 99}) is None
