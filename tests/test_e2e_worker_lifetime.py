"""End to end: worker scripts in the seed style (register, end the main code, no run call) can
use the whole standard library in their handlers — thread pools, multiprocessing pools,
asyncio.run, modules imported late — and still exit when they should. Real supervisor, real
worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import trio

from supervisor_harness import Supervisor, pid_alive, write_worker

POOLS = """
import asyncio, concurrent.futures, importlib, multiprocessing, os, threading

def square(x):
    return x * x

def threads_sync(data):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(square, data))

async def threads_async(data):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(square, x) for x in data]
        return [f.result(timeout=10) for f in futures]

def processes_sync(data):
    with multiprocessing.Pool(2) as pool:            # the platform's default start method
        return pool.map(square, data)

def processes_spawn(data):
    # spawn re-imports this script in each pool process, where register_worker() must not connect
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return pool.map(square, data)

async def processes_async(data):
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        return list(pool.map(square, data))

def asyncio_run(data):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(None, square, x) for x in data))
    return asyncio.run(main())

def late_import(_data):
    # a module imported after the main code ended that registers a threading atexit hook (as
    # concurrent.futures does): refused once Python's shutdown has begun
    module = importlib.import_module("_late")
    return module.VALUE

def main_thread_alive(_data):
    return threading.main_thread().is_alive()

iii.register_function("pools.threads_sync", threads_sync)
iii.register_function("pools.threads_async", threads_async)
iii.register_function("pools.processes_sync", processes_sync)
iii.register_function("pools.processes_spawn", processes_spawn)
iii.register_function("pools.processes_async", processes_async)
iii.register_function("pools.asyncio_run", asyncio_run)
iii.register_function("pools.late_import", late_import)
iii.register_function("pools.main_thread_alive", main_thread_alive)
iii.register_function("pools.pid", lambda _d: os.getpid())
"""

LATE = """
import threading
threading._register_atexit(lambda: None)
VALUE = "imported"
"""


@pytest.fixture
def pools_dir(tmp_path: Path) -> Path:
    d = tmp_path / "workers"
    d.mkdir()
    write_worker(d, "pools", POOLS)
    (d / "_late.py").write_text(LATE)  # a helper (leading _): not a worker itself
    return d


async def test_handlers_can_use_executors_pools_and_asyncio(pools_dir: Path) -> None:
    with trio.fail_after(60):
        async with Supervisor(pools_dir) as sup:
            await sup.start(expect_workers=1, functions=("pools.pid",))
            xs = [1, 2, 3, 4]
            squares = [1, 4, 9, 16]
            for name in ("threads_sync", "threads_async", "processes_sync", "processes_async", "asyncio_run"):
                assert await sup.call(f"pools.{name}", xs) == squares, name
            assert await sup.call("pools.processes_spawn", xs) == squares
            assert await sup.call("pools.late_import") == "imported"
            assert await sup.call("pools.main_thread_alive") is True
            # twice, so an executor's shutdown in the first call did not break the second
            assert await sup.call("pools.threads_sync", [5]) == [25]
            worker = (await sup.workers())["pools"]
            assert worker["restarts"] == 0 and worker["state"] == "running"
            output = sup.output()
            assert "after interpreter shutdown" not in output and "Traceback" not in output, output
            # spawned pool processes re-ran the script but did not connect as the worker
            assert "already connected" not in output and "refused a connection" not in output, output


async def test_worker_in_a_handler_exits_at_once_when_the_supervisor_is_killed(pools_dir: Path) -> None:
    write_worker(pools_dir, "busy", """
import time
def sleepy(_data):
    time.sleep(60)
iii.register_function("busy.sleepy", sleepy)
iii.register_function("busy.pid", lambda _d: __import__("os").getpid())
""")
    with trio.fail_after(30):
        async with Supervisor(pools_dir) as sup:
            await sup.start(expect_workers=2, functions=("pools.pid", "busy.pid"))
            pids = [w["pid"] for w in (await sup.workers()).values()]
            async with trio.open_nursery() as nursery:
                async def call_sleepy() -> None:
                    with contextlib.suppress(Exception):  # the supervisor dies under it
                        await sup.call("busy.sleepy")
                nursery.start_soon(call_sleepy)
                await trio.sleep(0.3)  # the handler is sleeping now
                assert sup.proc is not None
                sup.proc.kill()
                await sup.proc.wait()
                killed_at = time.monotonic()
                while [p for p in pids if pid_alive(p)]:
                    await trio.sleep(0.02)
                assert time.monotonic() - killed_at < 2.0
                nursery.cancel_scope.cancel()


async def test_a_script_that_calls_shutdown_exits(tmp_path: Path) -> None:
    d = tmp_path / "workers"
    d.mkdir()
    write_worker(d, "oneshot", """
import sys
iii.register_function("oneshot.f", lambda _d: 1)
iii.shutdown()
print("oneshot: main code done", flush=True)
""")
    with trio.fail_after(30):
        async with Supervisor(d, "--config", str(_slow_restart(tmp_path))) as sup:
            await sup.start()
            await sup.wait_for_output("oneshot: main code done")
            await sup.wait_for_output("worker oneshot exited with code 0")


async def test_a_main_code_that_raises_after_registering_exits_with_status_1(tmp_path: Path) -> None:
    d = tmp_path / "workers"
    d.mkdir()
    write_worker(d, "halfway", """
iii.register_function("halfway.f", lambda _d: 1)
raise RuntimeError("setup failed halfway")
""")
    with trio.fail_after(30):
        async with Supervisor(d, "--config", str(_slow_restart(tmp_path))) as sup:
            await sup.start()
            await sup.wait_for_output("worker halfway exited with code 1")
            output = sup.output()
            assert "RuntimeError: setup failed halfway" in output
            assert "the main code raised; closing the connection" in output


async def test_sigterm_still_stops_a_seed_style_worker(pools_dir: Path) -> None:
    with trio.fail_after(30):
        async with Supervisor(pools_dir) as sup:
            await sup.start(expect_workers=1, functions=("pools.pid",))
            pid = (await sup.workers())["pools"]["pid"]
            os.kill(pid, signal.SIGTERM)
            await sup.wait_for_output("worker pools was killed by SIGTERM")
            await sup.wait_running(1, restarts=1)


def _slow_restart(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("[restart]\ninitial_delay = 20.0\nmax_delay = 30.0\n")  # one run is all we watch
    return path
