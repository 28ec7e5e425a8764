"""Several instances of one worker (``instances = N``): the registry treats them as one owner
group (in process, fake owners), the invoker spreads calls over them (least in flight), and a
real supervisor runs, lists, spreads and survives them."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from iii_supervisor.errors import FunctionConflict
from iii_supervisor.invocation import Invoker
from iii_supervisor.protocol import InvocationResult, InvokeFunction, Message
from iii_supervisor.registry import FunctionEntry, Registry, TriggerEntry, TriggerTypeEntry
from supervisor_harness import Supervisor, open_control, pid_alive, run_cli, write_worker


class Owner:
    def __init__(self, name: str, group: str | None) -> None:
        self.name = name
        self.group = group
        self.sent: list[Message] = []

    def send_nowait(self, msg: Message) -> None:
        self.sent.append(msg)

    def backlog(self) -> int:
        return 0


class Provider:
    def __init__(self) -> None:
        self.live: list[str] = []

    def register(self, trigger: TriggerEntry) -> None:
        self.live.append(trigger.id)

    def unregister(self, trigger: TriggerEntry) -> None:
        self.live.remove(trigger.id)


def test_instances_of_one_worker_share_a_function_others_conflict() -> None:
    registry = Registry()
    a0, a1, b = Owner("api:0", "api"), Owner("api:1", "api"), Owner("billing", "billing")
    registry.add_function(FunctionEntry("api.get", a0))
    registry.add_function(FunctionEntry("api.get", a1))  # no conflict: same worker
    entry = registry.lookup("api.get")
    assert entry is not None and registry.owners_of(entry) == [a0, a1]
    assert registry.functions_of(a1) == ["api.get"]
    with pytest.raises(FunctionConflict):
        registry.add_function(FunctionEntry("api.get", b))
    # the first instance leaves: the function stays, served by the other
    registry.remove_owner(a0)
    entry = registry.lookup("api.get")
    assert entry is not None and registry.owners_of(entry) == [a1]
    registry.remove_owner(a1)
    assert registry.lookup("api.get") is None
    registry.add_function(FunctionEntry("api.get", b))  # free again


def test_instances_share_a_trigger_binding_that_lives_while_any_of_them_does() -> None:
    registry = Registry()
    provider = Provider()
    registry.add_trigger_type(TriggerTypeEntry("http", "test", provider))
    a0, a1, a2 = Owner("api:0", "api"), Owner("api:1", "api"), Owner("api:2", "api")
    config = {"api_path": "/users", "http_method": "GET"}
    for owner, tid in ((a0, "t0"), (a1, "t1"), (a2, "t2")):
        registry.add_trigger(TriggerEntry(tid, "http", "api.get", dict(config), owner))
    assert provider.live == ["t0"]  # bound once: no route clash between instances
    assert [t.id for t in registry.list_triggers()] == ["t0"]
    registry.remove_owner(a0)  # the owner of the binding goes: another instance takes it over
    assert provider.live == ["t0"]
    assert registry.remove_trigger("t2", a2) is not None  # an instance unregisters its own id
    registry.remove_owner(a1)
    assert provider.live == [] and registry.list_triggers() == []


async def test_calls_go_to_the_instance_with_the_fewest_in_flight() -> None:
    registry = Registry()
    a0, a1 = Owner("api:0", "api"), Owner("api:1", "api")
    registry.add_function(FunctionEntry("api.work", a0))
    registry.add_function(FunctionEntry("api.work", a1))
    invoker = Invoker(registry)
    caller = Owner("caller", "caller")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(invoker.run)
            for i in range(6):
                invoker.route(caller, InvokeFunction(function_id="api.work", invocation_id=str(i)))
            assert (len(a0.sent), len(a1.sent)) == (3, 3)
            # a0 answers its calls: the next ones go to a0, which has none in flight
            for msg in list(a0.sent):
                invoker.on_result(a0, InvocationResult(invocation_id=msg.invocation_id, result=1))
            for i in range(6, 9):
                invoker.route(caller, InvokeFunction(function_id="api.work", invocation_id=str(i)))
            assert (len(a0.sent), len(a1.sent)) == (6, 3)
            # one instance goes: only its calls fail, the others' stay in flight
            invoker.session_closed(a1)
            registry.remove_owner(a1)
            failed = [m for m in caller.sent if isinstance(m, InvocationResult) and m.error is not None]
            assert len(failed) == 3 and {m.error.code for m in failed} == {"invocation_stopped"}
            assert invoker.in_flight(a0) == 3
            nursery.cancel_scope.cancel()


API = """
import os, time
def who(_data):
    time.sleep(0.2)
    return {"pid": os.getpid(), "instance": os.environ.get("III_WORKER_INSTANCE")}
def slow(_data):
    time.sleep(30)
def page(_req):
    return {"status_code": 200, "body": {"pid": os.getpid()}}
iii.register_function("api.who", who)
iii.register_function("api.slow", slow)
iii.register_function("api.page", page)
iii.register_trigger({"type": "http", "function_id": "api.page", "config": {"api_path": "/page", "http_method": "GET"}})
"""


async def test_instances_end_to_end(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "api", API)
    config = tmp_path / "config.toml"
    config.write_text("[restart]\ninitial_delay = 20.0\n\n[workers.api]\ninstances = 2\n")
    with trio.fail_after(40):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(expect_workers=2, functions=("api.page",))
            listed = await sup.workers()
            assert set(listed) == {"api:0", "api:1"}
            pids = {listed["api:0"]["pid"], listed["api:1"]["pid"]}
            # concurrent calls are spread over both
            results: list[Any] = []
            async with trio.open_nursery() as nursery:
                async def one() -> None:
                    results.append(await sup.call("api.who"))
                for _ in range(6):
                    nursery.start_soon(one)
            assert {r["pid"] for r in results} == pids
            assert {r["instance"] for r in results} == {"0", "1"}
            # HTTP through a trigger both registered (no route clash)
            async with httpx.AsyncClient() as client:
                seen = {(await client.get(f"http://127.0.0.1:{sup.http_port}/page")).json()["pid"] for _ in range(4)}
            assert seen <= pids
            status = await run_cli(sup, "status")
            assert [r.split()[0] for r in status.stdout.decode().splitlines()[1:]] == ["api:0", "api:1"]
            # one instance dies in the middle of calls: only its own calls fail, the function stays
            async with open_control(sup.control_socket) as control:
                outcomes: list[Any] = []
                async with trio.open_nursery() as nursery:
                    async def slow() -> None:
                        outcomes.append(await control.call_raw("api.slow", timeout_ms=60_000))
                    nursery.start_soon(slow)
                    nursery.start_soon(slow)
                    while sum(w["in_flight"] for w in (await sup.workers()).values()) < 2:
                        await trio.sleep(0.05)
                    victim = (await sup.workers())["api:1"]
                    assert victim["in_flight"] == 1  # one each: least in flight first
                    os.kill(victim["pid"], signal.SIGKILL)
                    while not outcomes:
                        await trio.sleep(0.05)
                    assert outcomes[0].error is not None and outcomes[0].error.code == "invocation_stopped"
                    assert len(outcomes) == 1  # the other instance's call is still running
                    assert (await sup.call("api.who"))["instance"] == "0"  # still served
                    nursery.cancel_scope.cancel()
            assert not pid_alive(victim["pid"])
            # restart one instance by name, then all
            restarted = await run_cli(sup, "restart", "api:0")
            assert restarted.returncode == 0
            listed = await sup.workers()
            assert listed["api:1"]["state"] == "backoff"  # killed, waiting 20 s: untouched by restart api:0
            await run_cli(sup, "restart", "api")
            await sup.wait_running(2)
