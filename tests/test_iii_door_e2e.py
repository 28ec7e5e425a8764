"""End to end: REAL official-SDK workers (iii-sdk 0.25 from PyPI) against a real supervisor's iii door.

One supervisor run covers the scenarios (the suite must stay fast): a spawned SDK worker
(``tests/iii_sdk/sdk_a.py``: III_URL/III_TOKEN from the supervisor), one of our SDK's workers, and
an attached SDK worker the test starts itself (``tests/iii_sdk/sdk_x.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from iii_supervisor.errors import InvocationStopped
from supervisor_harness import Supervisor, json_lines, pid_alive, run_cli, write_worker

pytest.importorskip("iii", reason="the official iii-sdk is a test dependency")

HERE = Path(__file__).parent / "iii_sdk"

OURS = """
def mid(data):
    return {"mid": iii.trigger({"function_id": "a::leaf", "payload": data})}

iii.register_function("ours::mid", mid)
"""


async def wait_until(predicate: Any, what: str, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.05)


def kinds(out: Path) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}
    for entry in json_lines(out):
        seen.setdefault(entry["kind"], []).append(entry["data"])
    return seen


async def start_attached(port: int, name: str) -> trio.Process:
    env = {**os.environ, "OTEL_ENABLED": "false"}
    env.pop("III_TOKEN", None)
    return await trio.lowlevel.open_process([sys.executable, str(HERE / "sdk_x.py"), f"ws://127.0.0.1:{port}", name],
                                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def kill(proc: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_official_sdk_workers_end_to_end(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    shutil.copy(HERE / "sdk_a.py", workers / "sdk_a.py")
    write_worker(workers, "ours", OURS)
    out = tmp_path / "out.jsonl"
    env = {"DOOR_OUT": str(out), "OTEL_ENABLED": "false"}
    with trio.fail_after(120):
        async with Supervisor(workers, "--iii-port", "0", env=env) as sup:
            await sup.start(expect_workers=2, functions=("a::fire", "a::on_custom", "ours::mid"), timeout=30)
            port = sup.iii_port
            rows = await sup.workers()
            assert rows["sdk_a"]["state"] == "running" and rows["sdk_a"]["pid"] is not None  # spawned: its pid

            # register_function + http trigger, served over HTTP
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{sup.http_port}/sdk/hello/ada")
            assert response.status_code == 201 and response.json() == {"hi": "ada"}

            # a mixed chain: official SDK → our SDK → official SDK
            assert await sup.call("a::start", {"n": 41}) == {"mid": {"leaf": 42}}

            # trigger() with Void and Enqueue; triggers of every type we provide
            fired = await sup.call("a::fire", {})
            assert fired["void"] is None and isinstance(fired["receipt"]["messageReceiptId"], str)

            async def all_fired() -> bool:
                seen = kinds(out)
                return all(k in seen for k in ("sink", "topic", "pub", "cron", "state", "stream", "log", "custom"))

            await wait_until(all_fired, "every trigger fired")
            seen = kinds(out)
            assert {d["via"] for d in seen["sink"]} == {"void", "enqueue"}
            assert seen["topic"][0] == {"via": "topic"} and seen["pub"][0] == {"via": "pubsub"}
            assert seen["state"][0]["event_type"].endswith("created") and seen["state"][0]["key"] == "k"
            assert seen["stream"][0]["streamName"] == "doorstream"
            assert any("door-log" in str(entry) for entry in seen["log"])
            assert seen["custom-bound"] == [{"x": 1}] and seen["custom"] == [{"fired": {"x": 1}}]

            # an attached worker (not spawned): in status without pid, and a 30 MiB call to it
            x = await start_attached(port, "door-x")
            try:
                async def x_up() -> bool:
                    return "x::slow" in await sup.function_ids()

                await wait_until(x_up, "the attached worker registered")
                rows = await sup.workers()
                assert rows["door-x"]["state"] == "attached" and rows["door-x"]["pid"] is None
                assert rows["door-x"]["restarts"] is None and "x::size" in rows["door-x"]["functions"]
                assert rows["door-x"]["reported_runtime"] == "python"

                assert await sup.call("a::big", {"mib": 30}, timeout_ms=60_000) == {"size": 30 * 1024 * 1024}

                # the CLI sees the SDK workers
                status = await run_cli(sup, "status")
                assert b"door-x" in status.stdout and b"attached" in status.stdout and b"sdk_a" in status.stdout
                functions = await run_cli(sup, "functions")
                assert b"a::hello" in functions.stdout and b"x::size" in functions.stdout
                invoked = await run_cli(sup, "invoke", "a::leaf", '{"n": 1}')
                assert invoked.returncode == 0 and orjson.loads(invoked.stdout) == {"leaf": 2}

                # a server-side close (the worker sent garbage: 1002): the SDK reconnects with
                # reattach and registers again; the call it was serving ends with invocation_stopped
                with pytest.raises(InvocationStopped):
                    await sup.call("x::break", {})
                async def reattached() -> bool:
                    return "reattached" in sup.output()

                await wait_until(reattached, "the SDK reattached")

                async def x_back() -> bool:
                    return (await sup.workers()).get("door-x", {}).get("state") == "attached" and \
                        "x::size" in await sup.function_ids()

                await wait_until(x_back, "the attached worker came back")
                assert await sup.call("x::size", {"blob": "abc"}) == {"size": 3}

                # removal on disconnect: a call in flight fails with invocation_stopped
                async with trio.open_nursery() as nursery:
                    async def slow_call() -> None:
                        with pytest.raises(InvocationStopped):
                            await sup.call("x::slow", {})

                    nursery.start_soon(slow_call)

                    async def x_busy() -> bool:
                        return (await sup.workers())["door-x"]["in_flight"] >= 1

                    await wait_until(x_busy, "the slow call reached the attached worker")
                    x.send_signal(signal.SIGKILL)
                await x.wait()

                async def x_gone() -> bool:
                    return "x::size" not in await sup.function_ids() and "door-x" not in await sup.workers()

                await wait_until(x_gone, "the attached worker's functions removed")
            finally:
                await kill(x)

            # a spawned SDK worker that dies is restarted like any worker and comes back (new pid, new token)
            pid = (await sup.workers())["sdk_a"]["pid"]
            os.kill(pid, signal.SIGKILL)
            rows = await sup.wait_running(2, restarts=1)
            assert rows["sdk_a"]["restarts"] == 1 and rows["sdk_a"]["pid"] != pid

            async def a_back() -> bool:
                return "a::leaf" in await sup.function_ids()

            await wait_until(a_back, "the restarted SDK worker registered again")
            assert await sup.call("a::leaf", {"n": 0}) == {"leaf": 1}
            pid = rows["sdk_a"]["pid"]
            assert await sup.terminate() == 0
            assert not pid_alive(pid)
