"""Cron end to end: a real supervisor, real worker processes, real time (kept to a few seconds)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import orjson
import trio

from supervisor_harness import Supervisor, run_cli, write_worker

JOBS = """
import time

calls = {"fast": [], "slow": []}

def fast(data):
    calls["fast"].append({"at": time.time(), **data})

def slow(data):
    start = time.time()
    time.sleep(2.5)
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
            await trio.sleep(6.2)
            calls = await sup.call("jobs.calls")

            # every second, about once a second, at whole seconds
            fast = calls["fast"]
            assert 5 <= len(fast) <= 7, fast
            gaps = [b["at"] - a["at"] for a, b in zip(fast, fast[1:], strict=False)]
            assert all(0.7 < g < 1.3 for g in gaps), gaps
            assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c["scheduled_time"]) for c in fast)
            assert all(c["actual_time"] >= c["scheduled_time"][:-1] for c in fast)
            assert {c["trigger"] for c in fast} == {"cron"}

            # the slow job (2.5 s on a 1 s schedule) never overlaps itself and skips ticks
            slow = calls["slow"]
            assert len(slow) >= 1
            for a, b in zip(slow, slow[1:], strict=False):
                assert b["start"] >= a["end"]
            listed = await cron_jobs(sup)
            assert listed["jobs.slow"]["skipped_ticks"] >= 2
            assert "tick(s) skipped while the run" in sup.output()
            assert listed["maintenance.cleanup"]["next_run"].endswith("T03:00:00Z")
            assert await sup.call("maintenance.cleanup", {"trigger": "cron"}) is None  # def cleanup(): runs

            # cron ls: a table and --json
            table = await run_cli(sup, "cron", "ls")
            assert table.returncode == 0, table.stderr
            lines = table.stdout.decode().splitlines()
            assert lines[0].split()[:5] == ["JOB", "FUNCTION", "EXPRESSION", "TZ", "NEXT"]
            assert any("jobs.slow" in line and "* * * * * *" in line and "UTC" in line for line in lines[1:])
            as_json = await run_cli(sup, "cron", "ls", "--json")
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
