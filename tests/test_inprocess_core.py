"""Sessions, the invoker and the registry in this process, with fake workers over socket pairs.

Defects a hostile input or a big answer found (issue 7), each pinned by a test here, plus the
seams modules plug into (trigger actions).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from iii_supervisor.errors import EngineError
from iii_supervisor.protocol import (
    Action,
    Error,
    InvocationResult,
    InvokeFunction,
    RegisterTriggerType,
    TriggerRegistrationResult,
)
from iii_supervisor.registry import ActionCall, TriggerEntry, TriggerTypeEntry
from iii_supervisor.server import http as http_module
from inprocess import engine_parts

LIMIT = 4096  # a small frame limit, so that "too large" is cheap to reach


class AcceptAll:
    def register(self, trigger: TriggerEntry) -> None:
        pass

    def unregister(self, trigger: TriggerEntry) -> None:
        pass


async def test_a_result_too_large_for_the_caller_fails_that_call_and_keeps_both_connected() -> None:
    with trio.fail_after(10):
        async with engine_parts(config={"supervisor": {"max_frame_size": LIMIT, "max_queued_bytes": LIMIT}}) as parts:
            caller, executor = await parts.worker("caller"), await parts.worker("executor")
            size = 0

            async def big(_: Any) -> str:
                return "x" * size

            await executor.register_function("executor.big", big)
            # the executor's answer, under the engine's short invocation id, is just under the limit;
            # re-encoded under the caller's much longer id it is over
            overhead = len(b'{"type":"invocationresult","invocation_id":"1","function_id":"executor.big","result":""}')
            size = LIMIT - overhead - 4
            long_id = "c" * 300
            caller.send(InvokeFunction(function_id="executor.big", invocation_id=long_id))
            answer = await caller.wait_for(lambda e: isinstance(e, InvocationResult) and e.invocation_id == long_id)
            assert isinstance(answer, InvocationResult)
            assert answer.error is not None and answer.error.code == "result_too_large", answer
            assert "executor.big" in answer.error.message
            # nobody was disconnected: both still call and answer
            assert not caller.session.closed.is_set() and not executor.session.closed.is_set()
            size = 10
            assert await caller.call("executor.big") == "x" * 10


async def test_an_oversized_builtin_answer_fails_that_call_and_the_engine_keeps_running() -> None:
    limit = 64 * 1024
    with trio.fail_after(10):
        async with engine_parts(config={"supervisor": {"max_frame_size": limit, "max_queued_bytes": limit}}) as parts:
            from iii_supervisor.builtins import install_builtins

            install_builtins(parts.registry, pool=None)  # type: ignore[arg-type]
            parts.registry.add_trigger_type(TriggerTypeEntry("test", "accepts anything", AcceptAll()))
            worker = await parts.worker()
            await worker.register_function("w.f", _echo)
            for i in range(24):  # 24 × 4 KiB of config: the listing is over 64 KiB
                await worker.register_trigger("test", "w.f", {"blob": "b" * 4000}, trigger_id=f"t{i}")
            with pytest.raises(EngineError) as info:
                await worker.call("engine::triggers::list")
            assert info.value.code == "result_too_large"
            # the invoker (and so the supervisor) survived: the next calls are served
            assert await worker.call("w.f", 7) == 7
            assert (await worker.call("engine::functions::list"))["functions"][0]["function_id"] == "w.f"


async def test_a_call_too_large_for_its_target_fails_alone() -> None:
    # an in-process caller (the HTTP front, cron …) builds a call that no frame to the worker
    # can hold (an HTTP JSON body re-encoded larger, say): that call fails, nothing else
    with trio.fail_after(10):
        async with engine_parts(config={"supervisor": {"max_frame_size": LIMIT, "max_queued_bytes": LIMIT}}) as parts:
            executor = await parts.worker("executor")
            await executor.register_function("executor.f", _echo)
            with pytest.raises(EngineError) as info:
                await parts.invoker.call("executor.f", "p" * LIMIT)
            assert info.value.code == "request_too_large"
            assert "executor.f" in info.value.message
            assert await parts.invoker.call("executor.f", "small") == "small"
            assert not executor.session.closed.is_set() and parts.invoker.pending == {}


async def test_an_action_is_served_by_the_module_that_registered_a_handler() -> None:
    seen: list[ActionCall] = []

    async def enqueue(call: ActionCall) -> dict[str, str]:
        seen.append(call)
        return {"messageReceiptId": "r-1"}

    with trio.fail_after(5):
        async with engine_parts() as parts:
            worker = await parts.worker()
            parts.registry.add_action_handler("enqueue", enqueue)
            result = await worker.call("orders.charge", {"id": 1}, action=Action(type="enqueue", queue="payments"))
            assert result == {"messageReceiptId": "r-1"}
            assert seen[0].function_id == "orders.charge" and seen[0].data == {"id": 1}
            assert seen[0].action.queue == "payments" and seen[0].caller == worker.name


async def test_without_a_handler_an_action_gets_its_clear_error() -> None:
    with trio.fail_after(5):
        async with engine_parts() as parts:
            worker = await parts.worker()
            with pytest.raises(EngineError) as info:
                await worker.call("orders.charge", {}, action=Action(type="enqueue", queue="payments"))
            assert info.value.code == "enqueue_error"
            assert "payments" in info.value.message and "orders.charge" in info.value.message


async def test_a_failing_action_handler_fails_the_call_not_the_engine() -> None:
    async def broken(_: ActionCall) -> None:
        raise RuntimeError("module bug")

    with trio.fail_after(5):
        async with engine_parts() as parts:
            worker = await parts.worker()
            await worker.register_function("w.f", _echo)
            parts.registry.add_action_handler("enqueue", broken)
            with pytest.raises(EngineError) as info:
                await worker.call("w.f", 1, action=Action(type="enqueue"))
            assert info.value.code == "invocation_failed" and "module bug" in info.value.message
            assert await worker.call("w.f", 2) == 2


async def _echo(data: Any) -> Any:
    return data


async def test_an_answer_that_cannot_be_sent_at_all_never_takes_the_invoker_down() -> None:
    # a tiny frame, long ids: neither the timeout error nor its result_too_large fallback fits
    # the caller's frame; the call is dropped, the timer, the invoker and both sessions live on
    limit = 1500
    with trio.fail_after(10):
        async with engine_parts(config={"supervisor": {"max_frame_size": limit, "max_queued_bytes": limit}}) as parts:
            caller, executor = await parts.worker("caller"), await parts.worker("executor")
            never = trio.Event()

            async def hang(_: Any) -> None:
                await never.wait()

            slow_id = "executor." + "s" * 400
            await executor.register_function(slow_id, hang)
            await executor.register_function("executor.f", _echo)
            caller.send(InvokeFunction(function_id=slow_id, invocation_id="c" * 1000, timeout_ms=50))
            await trio.sleep(0.3)  # its deadline passed and its answer was dropped
            assert parts.invoker.pending == {}
            assert await caller.call("executor.f", 1) == 1  # the invoker's timer and nursery still run
            with pytest.raises(EngineError) as info:
                await caller.call(slow_id, timeout_ms=50)
            assert info.value.code == "invocation_timeout"
            assert not caller.session.closed.is_set() and not executor.session.closed.is_set()


async def test_ids_over_the_length_limit_are_malformed() -> None:
    with trio.fail_after(10):
        async with engine_parts() as parts:
            worker = await parts.worker()
            worker.send(InvokeFunction(function_id="f" * 2000, invocation_id="1"))
            error = await worker.wait_for(lambda e: isinstance(e, Error))
            assert isinstance(error, Error) and error.error.code == "malformed_message"
            assert "function_id is 2000 characters long" in error.error.message
            await worker.session.closed.wait()  # the peer broke the protocol: disconnected


async def test_a_module_error_at_the_http_front_is_an_answer_not_a_dropped_client() -> None:
    async def store_full(_: Any) -> None:
        raise EngineError("the disk is full", code="store_full")

    with trio.fail_after(10):
        async with engine_parts(modules=[http_module.SPEC], config={"http": {"port": 0}}) as parts:
            parts.registry.add_builtin("test::full", store_full, "fails with a module's own error")
            worker = await parts.worker()
            await worker.register_function("w.yes", _truthy)
            await worker.register_trigger("http", "test::full", {"api_path": "/full"})
            await worker.register_trigger("http", "test::full", {"api_path": "/guarded", "http_method": "POST",
                                                                 "condition_function_id": "test::full"})
            port = parts.modules["http"].port  # type: ignore[attr-defined]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for method, path in (("GET", "/full"), ("POST", "/guarded")):
                    response = await client.request(method, path)
                    assert response.status_code == 500
                    assert response.json()["error"]["code"] == "store_full"


async def test_a_trigger_config_that_outgrows_the_providers_frame_is_refused_and_the_old_binding_kept() -> None:
    limit = 64 * 1024
    with trio.fail_after(10):
        async with engine_parts(config={"supervisor": {"max_frame_size": limit, "max_queued_bytes": limit}}) as parts:
            provider, user = await parts.worker("provider"), await parts.worker("user")
            provider.send(RegisterTriggerType(id="custom", description="a worker's own type"))
            await user.register_function("user.f", _echo)
            while parts.registry.trigger_type("custom") is None:
                await trio.sleep(0)
            await user.register_trigger("custom", "user.f", {"n": 1}, trigger_id="t1")
            huge = "[" + ",".join(["1E9"] * 15_000) + "]"  # 60 KB as sent, ~195 KB re-encoded
            frame = ('{"type":"registertrigger","id":"t1","trigger_type":"custom","function_id":"user.f",'
                     '"config":{"n":' + huge + "}}").encode()
            mark = len(user.received)
            await user.send_raw(frame)
            answer = await user.wait_for(lambda e: isinstance(e, TriggerRegistrationResult) and e.id == "t1",
                                         start=mark)
            assert isinstance(answer, TriggerRegistrationResult) and answer.error is not None
            assert answer.error.code == "trigger_registration_failed"
            assert "cannot be sent to the provider" in answer.error.message
            kept = parts.registry.trigger("t1")
            assert kept is not None and kept.config == {"n": 1} and kept.active
            assert not provider.session.closed.is_set() and not user.session.closed.is_set()


async def _truthy(_: Any) -> bool:
    return True


async def test_data_nested_too_deep_to_re_encode_fails_that_call_and_keeps_the_caller() -> None:
    with trio.fail_after(10):
        async with engine_parts() as parts:
            caller, executor = await parts.worker("caller"), await parts.worker("executor")
            await executor.register_function("executor.f", _echo)
            deep = "[" * 300 + "]" * 300  # orjson reads it, but writes at most 254 levels
            mark = len(caller.received)
            await caller.send_raw(('{"type":"invokefunction","function_id":"executor.f","invocation_id":"d1",'
                                   '"data":' + deep + "}").encode())
            answer = await caller.wait_for(lambda e: isinstance(e, InvocationResult), start=mark)
            assert isinstance(answer, InvocationResult) and answer.error is not None
            assert answer.error.code == "request_too_large" and "cannot encode" in answer.error.message
            assert await caller.call("executor.f", [1]) == [1]
            assert not caller.session.closed.is_set() and not executor.session.closed.is_set()
