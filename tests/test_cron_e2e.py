"""Cron end to end: a real supervisor, real worker processes, real time (kept to a few seconds)."""

from __future__ import annotations

import os
import re
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import trio

from supervisor_harness import Supervisor, json_lines, run_cli, write_worker

JOBS = """
import threading
import time

lock = threading.Lock()
calls = {"fast": [], "slow": [], "running": 0, "most": 0}

def fast(data):
    calls["fast"].append({"at": time.time(), **data})

def slow(data):
    with lock:                           # sync handlers run in threads
        calls["running"] += 1
        calls["most"] = max(calls["most"], calls["running"])
    start = time.time()
    time.sleep(2.5)
    with lock:
        calls["running"] -= 1
    calls["slow"].append({"start": start, "end": time.time(), **data})

def cleanup():                       # the seed's "Scheduled Cleanup" form: no parameter
    return None

iii.register_function({"id": "jobs.fast"}, fast)
iii.register_function({"id": "jobs.slow"}, slow)
iii.register_function({"id": "jobs.calls"}, lambda _data: calls)
fn = iii.register_function({"id": "maintenance.cleanup"}, cleanup)
iii.register_trigger({"type": "cron", "function_id": "jobs.fast", "config": {"expression": "* * * * * *"}})
iii.register_trigger({"type": "cron", "function_id": "jobs.slow", "config": {"expression": "* * * * * *"}})
iii.register_trigger({
    'type': 'cron',
    'function_id': fn.id,
    'config': {
        'expression': '0 3 * * *',
    },
})
"""


async def cron_jobs(sup: Supervisor) -> dict[str, dict[str, Any]]:
    return {j["function_id"]: j for j in (await sup.call("engine::cron::list"))["jobs"]}


async def test_cron_jobs_run_every_second_never_overlap_and_show_in_cron_ls(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "jobs", JOBS)
    with trio.fail_after(60):
        async with Supervisor(workers) as sup:
            await sup.start(expect_workers=1, functions=("jobs.calls",))
            while len(await cron_jobs(sup)) < 3:
                await trio.sleep(0.05)
            cli: dict[str, Any] = {}

            async def cron_ls(*flags: str) -> None:
                await trio.sleep(1.5)  # (after a few runs) while the ticks go on
                cli[" ".join(flags)] = await run_cli(sup, "cron", "ls", *flags)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep, 4.2)
                nursery.start_soon(cron_ls)
                nursery.start_soon(cron_ls, "--json")
            calls = await sup.call("jobs.calls")

            # every second, about once a second, at whole seconds
            fast = calls["fast"]
            assert 3 <= len(fast) <= 6, fast
            ticks = [datetime.fromisoformat(c["scheduled_time"]).timestamp() for c in fast]
            assert [b - a for a, b in zip(ticks, ticks[1:], strict=False)] == [1.0] * (len(ticks) - 1)
            # each run started at its tick (the handler's own clock is left out: on a loaded shared
            # machine a worker thread can start half a second late)
            late = [datetime.fromisoformat(c["actual_time"]).timestamp() - t for c, t in zip(fast, ticks, strict=True)]
            assert all(0 <= d < 0.9 for d in late), late
            assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c["scheduled_time"]) for c in fast)
            assert all(c["actual_time"] >= c["scheduled_time"][:-1] for c in fast)
            assert {c["trigger"] for c in fast} == {"cron"}

            # the slow job (2.5 s on a 1 s schedule) never overlaps itself and skips ticks
            slow = calls["slow"]
            assert len(slow) >= 1 and calls["most"] == 1  # never two runs at once
            for a, b in zip(slow, slow[1:], strict=False):
                assert b["start"] >= a["end"]
            listed = await cron_jobs(sup)
            assert listed["jobs.slow"]["skipped_ticks"] >= 2
            assert "tick(s) skipped while the run" in sup.output()
            assert listed["maintenance.cleanup"]["next_run"].endswith("T03:00:00Z")
            assert await sup.call("maintenance.cleanup", {"trigger": "cron"}) is None  # def cleanup(): runs

            # cron ls: a table and --json
            table = cli[""]
            assert table.returncode == 0, table.stderr
            lines = table.stdout.decode().splitlines()
            assert lines[0].split()[:5] == ["JOB", "FUNCTION", "EXPRESSION", "TZ", "NEXT"]
            assert any("jobs.slow" in line and "* * * * * *" in line and "UTC" in line for line in lines[1:])
            as_json = cli["--json"]
            assert as_json.returncode == 0
            rows = {j["function_id"]: j for j in orjson.loads(as_json.stdout)}
            assert rows["jobs.fast"]["last_run"]["status"] == "ok"
            assert rows["maintenance.cleanup"]["expression"] == "0 3 * * *"


async def test_a_job_goes_with_its_worker_and_returns_when_it_registers_again(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "one", """
iii.register_function("one.job", lambda data: None)
iii.register_trigger({"type": "cron", "function_id": "one.job", "config": {"expression": "@hourly"}})
""")
    cfg = tmp_path / "slow-restart.toml"
    cfg.write_text("[restart]\ninitial_delay = 2.0\n")
    with trio.fail_after(30):
        async with Supervisor(workers, "--config", str(cfg)) as sup:
            await sup.start(expect_workers=1, functions=("one.job",))
            while not await cron_jobs(sup):
                await trio.sleep(0.05)
            os.kill((await sup.workers())["one"]["pid"], signal.SIGKILL)
            with trio.fail_after(1.5):  # well before the restart (2 s)
                while await cron_jobs(sup):
                    await trio.sleep(0.02)
            with trio.fail_after(10):
                while not await cron_jobs(sup):
                    await trio.sleep(0.05)


async def test_a_bad_expression_fails_the_workers_register_trigger(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "bad", """
iii.register_function("bad.job", lambda data: None)
try:
    iii.register_trigger({"type": "cron", "function_id": "bad.job", "config": {"expression": "0 2 * *"}})
except Exception as exc:
    print("REFUSED", type(exc).__name__, exc.code, exc.message, flush=True)
""")
    with trio.fail_after(30):
        async with Supervisor(workers) as sup:
            await sup.start(expect_workers=1, functions=("bad.job",))
            await sup.wait_for_output("REFUSED")
            assert ("REFUSED TriggerRegistrationError trigger_registration_failed cron trigger" in sup.output())
            assert "cron expression '0 2 * *': has 4 field(s)" in sup.output()


async def test_persistent_catch_up_after_a_supervisor_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    log = tmp_path / "runs.jsonl"
    write_worker(workers, "nightly", f"""
import json

def nightly(data):
    with open({str(log)!r}, "a") as f:
        f.write(json.dumps(data) + "\\n")

iii.register_function("nightly.run", nightly)
iii.register_trigger({{"type": "cron", "function_id": "nightly.run",
                      "config": {{"expression": "* * * * * *", "persistent": True}}}})
""")
    data_dir = tmp_path / "data"

    def runs() -> list[dict[str, Any]]:
        return json_lines(log)

    with trio.fail_after(60):
        async with Supervisor(workers, "--data-dir", str(data_dir)) as sup:
            await sup.start(expect_workers=1, functions=("nightly.run",))
            while not runs():
                await trio.sleep(0.05)
            assert await sup.terminate() == 0
        before = len(runs())
        assert not any(r.get("catch_up") for r in runs())
        await trio.sleep(1.1)  # down for a tick or more
        async with Supervisor(workers, "--data-dir", str(data_dir)) as sup:
            await sup.start(expect_workers=1, functions=("nightly.run",))
            while len(runs()) < before + 2:
                await trio.sleep(0.05)
            after = runs()[before:]
            assert after[0]["catch_up"] is True  # first, at once, and only once
            assert after[0]["scheduled_time"] > runs()[before - 1]["scheduled_time"]  # a tick of the downtime
            assert [r.get("catch_up", False) for r in after[1:]] == [False] * (len(after) - 1)
            assert "catching up the tick of" in sup.output()


async def test_the_example_workers_start_and_register_their_cron_jobs(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parent.parent / "workers"
    with trio.fail_after(60):
        async with Supervisor(examples, "--data-dir", str(tmp_path / "data")) as sup:
            await sup.start(functions=("reports.daily", "reports.cleanup", "reports.heartbeat", "reports.backup"))
            listed = await cron_jobs(sup)
            assert {f: j["expression"] for f, j in listed.items()} == {
                "reports.daily": "0 2 * * *", "reports.cleanup": "0 3 * * *",
                "reports.heartbeat": "0 * * * * *", "reports.backup": "30 1 * * *"}
            assert listed["reports.backup"]["timezone"] == "Europe/Berlin" and listed["reports.backup"]["persistent"]
            await trio.sleep(0.5)
            workers = await sup.workers()
            assert all(w["state"] == "running" and w["restarts"] == 0 for w in workers.values()), workers
