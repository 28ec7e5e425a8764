"""The cron module in-process: fake workers over socket pairs, trio's MockClock, a fake wall clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from iii_supervisor.errors import TriggerRegistrationError
from iii_supervisor.modules import cron
from iii_supervisor.modules.cron import CronConfig, CronModule, MemoryLastRuns
from iii_supervisor.modules.cron_storage import StoreLastRuns
from iii_supervisor.store import SqliteStore
from inprocess import EngineParts, engine_parts

#: a wall-clock start half a second after a whole second, so ticks are not at the start instant
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp() + 0.5


class FakeWall:
    """A wall clock that moves with trio's (mock) clock, and can be stepped like ``date -s``."""

    def __init__(self, start: float = START) -> None:
        self.offset = start - trio.current_time()

    def __call__(self) -> float:
        return self.offset + trio.current_time()

    def jump(self, seconds: float) -> None:
        self.offset += seconds


@asynccontextmanager
async def cron_parts(wall: FakeWall | None = None, last_runs: MemoryLastRuns | None = None,
                     **config: Any) -> AsyncIterator[tuple[EngineParts, CronModule, FakeWall]]:
    wall = wall or FakeWall()
    async with engine_parts() as parts:
        module = CronModule(CronConfig(**config), parts.registry, parts.invoker, default_timeout=30.0,
                            last_runs=last_runs, wall_clock=wall)
        await parts.nursery.start(module.run)
        yield parts, module, wall


class Recorder:
    def __init__(self, seconds: float = 0.0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.seconds = seconds
        self.running = 0
        self.max_running = 0
        self._called = trio.Event()

    async def wait_called(self) -> None:
        """Until the first call (no polling)."""
        await self._called.wait()

    async def __call__(self, data: Any) -> Any:
        self.calls.append(data)
        self._called.set()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await trio.sleep(self.seconds)
        finally:
            self.running -= 1
        return "done"


async def jobs(parts: EngineParts) -> dict[str, dict[str, Any]]:
    return {j["job_id"]: j for j in (await parts.invoker.call("engine::cron::list"))["jobs"]}


async def test_every_second_job_runs_once_per_second(autojump_clock: Any) -> None:
    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.tick", rec)
            await worker.register_trigger("cron", "w.tick", {"expression": "* * * * * *"}, trigger_id="every")
            await trio.sleep(10.2)
            assert len(rec.calls) == 10
            first = rec.calls[0]
            assert first["trigger"] == "cron" and first["job_id"] == "every"
            assert first["scheduled_time"] == "2026-03-01T12:00:01Z"
            assert first["actual_time"].startswith("2026-03-01T12:00:01")
            assert "catch_up" not in first
            listed = (await jobs(parts))["every"]
            assert listed["last_run"]["status"] == "ok" and listed["skipped_ticks"] == 0
            assert listed["next_run"] == "2026-03-01T12:00:11Z"
            assert listed["worker_name"] == "w"


async def test_the_seed_snippet_form_runs_daily_at_0200(autojump_clock: Any) -> None:
    with trio.fail_after(2 * 86400):
        wall = FakeWall(datetime(2026, 3, 1, 1, 59, 58, tzinfo=UTC).timestamp())
        async with cron_parts(wall, clock_check_interval=600.0) as (parts, _m, _w):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("reports.daily", rec)
            await worker.register_trigger("cron", "reports.daily", {"expression": "0 2 * * *"})
            await trio.sleep(3)
            assert [c["scheduled_time"] for c in rec.calls] == ["2026-03-01T02:00:00Z"]
            await trio.sleep(86400)
            assert [c["scheduled_time"] for c in rec.calls] == ["2026-03-01T02:00:00Z", "2026-03-02T02:00:00Z"]


async def test_a_slow_run_never_overlaps_and_its_skipped_ticks_are_counted(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="iii_supervisor.modules.cron")
    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder(seconds=2.5)
            await worker.register_function("w.slow", rec)
            await worker.register_trigger("cron", "w.slow", {"expression": "* * * * * *"}, trigger_id="slow")
            await trio.sleep(8.7)  # ticks at :01 … :09; runs :01 (to :03.5), :04 (to :06.5), :07 (to :09.5)
            assert rec.max_running == 1
            assert [c["scheduled_time"][-3:] for c in rec.calls] == ["01Z", "04Z", "07Z"]
            listed = (await jobs(parts))["slow"]
            assert listed["skipped_ticks"] == 6 and listed["running"] is True
            lines = [r.getMessage() for r in caplog.records if "skipped while the run" in r.getMessage()]
            assert len(lines) == 2 and "2 tick(s) skipped" in lines[0]  # one line per run


async def test_a_hung_run_ends_at_its_deadline(autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder(seconds=1000)
            await worker.register_function("w.hang", rec)
            await worker.register_trigger("cron", "w.hang", {"expression": "*/10 * * * * *", "timeout_ms": 3000},
                                          trigger_id="hang")
            await trio.sleep(9.6)  # tick at 10 s
            await trio.sleep(3.5)
            listed = (await jobs(parts))["hang"]
            assert listed["last_run"]["status"] == "error"
            assert listed["last_run"]["error"].startswith("invocation_timeout")
            assert listed["last_run"]["duration_ms"] == pytest.approx(3000, abs=5)
            await trio.sleep(7)  # the next tick (20 s) runs again
            assert len(rec.calls) == 2
            assert any("hang" in r.getMessage() and "invocation_timeout" in r.getMessage() for r in caplog.records)


async def test_errors_are_logged_with_the_job_and_the_message(autojump_clock: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    async def boom(_data: Any) -> Any:
        raise ValueError("disk on fire")

    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, _wall):
            worker = await parts.worker("w")
            await worker.register_function("w.boom", boom)
            await worker.register_trigger("cron", "w.boom", {"expression": "* * * * * *"}, trigger_id="job-b")
            await trio.sleep(2.2)
            failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert len(failures) == 2  # no retry: one line per tick
            assert "job-b" in failures[0] and "disk on fire" in failures[0]


async def test_a_falsy_condition_skips_the_tick(autojump_clock: Any) -> None:
    allow = {"value": False}
    seen: list[Any] = []

    async def condition(data: Any) -> Any:
        seen.append(data)
        return allow["value"]

    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.job", rec)
            await worker.register_function("w.cond", condition)
            await worker.register_trigger("cron", "w.job", {"expression": "* * * * * *",
                                                            "condition_function_id": "w.cond"}, trigger_id="c")
            await trio.sleep(2.2)
            assert rec.calls == [] and len(seen) == 2
            assert seen[0]["job_id"] == "c"  # the condition gets the same payload
            assert (await jobs(parts))["c"]["last_run"]["status"] == "skipped"
            allow["value"] = True
            await trio.sleep(1)
            assert len(rec.calls) == 1 and rec.calls[0] == seen[-1]


async def test_a_forward_clock_jump_fires_no_burst(autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.minute", rec)
            await worker.register_trigger("cron", "w.minute", {"expression": "* * * * *"}, trigger_id="m")
            await trio.sleep(60)  # the 12:01 tick
            assert len(rec.calls) == 1
            wall.jump(3 * 3600)  # 180 ticks "missed"
            await trio.sleep(2)
            assert len(rec.calls) == 1  # no burst
            assert any("wall clock jumped +10800" in r.getMessage() for r in caplog.records)
            assert (await jobs(parts))["m"]["next_run"] == "2026-03-01T15:02:00Z"
            await trio.sleep(60)
            assert [c["scheduled_time"] for c in rec.calls] == ["2026-03-01T12:01:00Z", "2026-03-01T15:02:00Z"]


async def test_a_backward_clock_jump_does_not_stall(autojump_clock: Any) -> None:
    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.minute", rec)
            await worker.register_trigger("cron", "w.minute", {"expression": "* * * * *"}, trigger_id="m")
            await trio.sleep(60)
            wall.jump(-3600)  # back to 11:01: without a recompute it would wait an hour
            await trio.sleep(61)
            assert [c["scheduled_time"] for c in rec.calls] == ["2026-03-01T12:01:00Z", "2026-03-01T11:02:00Z"]


async def test_jobs_go_with_their_worker_and_come_back(autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="iii_supervisor.modules.cron")
    with trio.fail_after(4000):
        async with cron_parts() as (parts, module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.job", rec)
            await worker.register_trigger("cron", "w.job", {"expression": "* * * * * *"}, trigger_id="j")
            await trio.sleep(2.2)
            await worker.framed.aclose()  # the worker's process exits
            await trio.sleep(0.1)
            assert await jobs(parts) == {} and module.jobs == {}
            await trio.sleep(5)
            assert len(rec.calls) == 2
            again = await parts.worker("w")
            await again.register_function("w.job", rec)
            await again.register_trigger("cron", "w.job", {"expression": "* * * * * *"}, trigger_id="j2")
            assert list(await jobs(parts)) == ["j2"]
            assert any("5 tick(s) skipped while it was not registered" in r.getMessage() for r in caplog.records)
            await trio.sleep(1)
            assert len(rec.calls) == 3


async def test_unregistering_stops_the_job_even_during_a_run(autojump_clock: Any) -> None:
    with trio.fail_after(4000):
        async with cron_parts() as (parts, module, _wall):
            worker = await parts.worker("w")
            rec = Recorder(seconds=1.5)
            await worker.register_function("w.job", rec)
            await worker.register_trigger("cron", "w.job", {"expression": "* * * * * *"}, trigger_id="j")
            await trio.sleep(1.2)
            worker.unregister_trigger("j")
            await trio.sleep(5)
            assert len(rec.calls) == 1 and module.jobs == {} and rec.running == 0


async def test_a_tick_while_the_function_is_missing_is_skipped_with_a_log_line(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, _wall):
            host = await parts.worker("host")  # binds a trigger to another worker's function
            await host.register_trigger("cron", "other.job", {"expression": "* * * * * *"}, trigger_id="x")
            await trio.sleep(1.2)
            assert any("tick 2026-03-01T12:00:01Z skipped" in r.getMessage() and "other.job" in r.getMessage()
                       for r in caplog.records)
            assert (await jobs(parts))["x"]["last_run"]["error"].startswith("function_not_found")


async def test_persistent_catch_up_after_a_restart(autojump_clock: Any) -> None:
    store = MemoryLastRuns()
    config = {"expression": "0 2 * * *", "persistent": True}
    with trio.fail_after(4000):
        wall = FakeWall(datetime(2026, 3, 1, 1, 59, 59, tzinfo=UTC).timestamp())
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.daily", rec)
            await worker.register_trigger("cron", "w.daily", config)
            await trio.sleep(2)
            assert len(rec.calls) == 1
        # the supervisor is down for three days; then it starts again with the same store
        wall.jump(3 * 86400)
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.daily", rec)
            job_id = await worker.register_trigger("cron", "w.daily", config)
            await trio.sleep(1)
            assert len(rec.calls) == 1  # once per downtime, not three times
            assert rec.calls[0]["catch_up"] is True and rec.calls[0]["scheduled_time"] == "2026-03-02T02:00:00Z"
            assert (await jobs(parts))[job_id]["last_run"]["catch_up"] is True
            await trio.sleep(3600)
            assert len(rec.calls) == 1
        # restarted again at once: the catch-up is not repeated
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.daily", rec)
            await worker.register_trigger("cron", "w.daily", config)
            await trio.sleep(5)
            assert rec.calls == []


class SlowLastRuns(MemoryLastRuns):
    """A store that answers reads late (a loaded machine: the store's thread is slow)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def get_many(self, keys: list[str]) -> dict[str, float]:
        await trio.sleep(self.delay)
        return await super().get_many(keys)


async def test_a_slow_store_read_does_not_turn_the_catch_up_into_an_ordinary_tick(autojump_clock: Any) -> None:
    """A persistent job is scheduled only once its last run is read: a tick that came first
    would run as an ordinary run, and the catch-up of the missed tick would be lost."""
    store = SlowLastRuns(delay=2.5)
    config = {"expression": "* * * * * *", "persistent": True}
    with trio.fail_after(100):
        wall = FakeWall(datetime(2026, 3, 1, 1, 0, 0, tzinfo=UTC).timestamp())
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.every", rec)
            await worker.register_trigger("cron", "w.every", config)
            await trio.sleep(4)
            assert rec.calls and not any(c.get("catch_up") for c in rec.calls)
        wall.jump(60)  # down for a minute
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.every", rec)
            await worker.register_trigger("cron", "w.every", config)
            await trio.sleep(5)
            assert rec.calls[0].get("catch_up") is True, rec.calls[:2]  # first, though ticks came during the read
            assert [c.get("catch_up", False) for c in rec.calls[1:]] == [False] * (len(rec.calls) - 1)


async def test_persistent_job_first_seen_then_missed_is_caught_up(autojump_clock: Any) -> None:
    store = MemoryLastRuns()
    config = {"expression": "0 2 * * *", "persistent": True}
    with trio.fail_after(4000):
        wall = FakeWall(datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp())
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            await worker.register_function("w.daily", Recorder())
            await worker.register_trigger("cron", "w.daily", config)
            await trio.sleep(1)
        assert len(store.times) == 1  # remembered from its first registration on
        wall.jump(86400)
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.daily", rec)
            await worker.register_trigger("cron", "w.daily", config)
            await trio.sleep(1)
            assert [c.get("catch_up") for c in rec.calls] == [True]


async def test_non_persistent_jobs_do_not_catch_up(autojump_clock: Any) -> None:
    store = MemoryLastRuns()
    config = {"expression": "0 2 * * *"}
    with trio.fail_after(4000):
        wall = FakeWall(datetime(2026, 3, 1, 1, 59, 59, tzinfo=UTC).timestamp())
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            await worker.register_function("w.daily", Recorder())
            await worker.register_trigger("cron", "w.daily", config)
            await trio.sleep(2)
        wall.jump(3 * 86400)
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.daily", rec)
            await worker.register_trigger("cron", "w.daily", config)
            await trio.sleep(5)
            assert rec.calls == [] and store.times == {}


async def test_the_module_through_its_spec() -> None:
    """As the engine builds it: the [cron] section, the trigger type, engine::cron::list."""
    with trio.fail_after(10):
        async with engine_parts(modules=[cron.SPEC], config={"cron": {"default_timeout_ms": 1234}}) as parts:
            module = parts.modules["cron"]
            assert isinstance(module, CronModule) and module.default_timeout == 1.234
            worker = await parts.worker("w")
            await worker.register_function("w.job", Recorder())
            with pytest.raises(TriggerRegistrationError) as info:
                await worker.register_trigger("cron", "w.job", {"expression": "0 2 * *"}, trigger_id="bad")
            assert "cron trigger 'bad' for 'w.job': cron expression '0 2 * *': has 4 field(s)" in info.value.message
            await worker.register_trigger("cron", "w.job", {"expression": "0 0 2 * * *", "timezone": "Europe/Berlin"},
                                          trigger_id="good")
            listed = (await jobs(parts))["good"]
            assert listed["expression"] == "0 0 2 * * *" and listed["timezone"] == "Europe/Berlin"
            assert listed["next_run_local"].endswith("T02:00:00+01:00") or listed["next_run_local"].endswith(
                "T02:00:00+02:00")
            assert listed["last_run"] is None and listed["persistent"] is False
            assert "bad" not in await jobs(parts)


async def test_garbage_trigger_configs_are_refused_and_the_module_keeps_going(
        caplog: pytest.LogCaptureFixture) -> None:
    garbage: list[Any] = [{"expression": None}, {"expression": 3}, {"expression": {"a": 1}}, {"expression": ["*"] * 5},
                          {"expression": "* * * * *", "timezone": "\x00"}, {"expression": "*" * 100000},
                          {"expression": "* * * * *", "timeout_ms": 1e300}, {"expression": "@" * 50}]
    with trio.fail_after(20):
        async with engine_parts(modules=[cron.SPEC]) as parts:
            worker = await parts.worker("w")
            for i, config in enumerate(garbage):
                with pytest.raises(TriggerRegistrationError):
                    await worker.register_trigger("cron", "w.job", config, trigger_id=f"g{i}")
            assert await jobs(parts) == {}
            await worker.register_trigger("cron", "w.job", {"expression": "@hourly"}, trigger_id="ok")
            assert list(await jobs(parts)) == ["ok"]
            assert all(len(r.getMessage()) < 600 for r in caplog.records)  # a huge expression is not echoed whole


@pytest.mark.parametrize("section", [{"clock_jump_threshold": 0}, {"default_timeout_ms": -1},
                                     {"clock_check_interval": float("nan")}, {"clock_jump_threshold": float("inf")},
                                     {"clock_check_interval": "often"}, {"retries": 3}])
def test_bad_cron_sections_are_refused(section: dict[str, Any]) -> None:
    from iii_supervisor.config import parse_config
    from iii_supervisor.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config({"cron": section}, modules=(cron.SPEC,))
    assert "cron" in info.value.message


@asynccontextmanager
async def stored_cron_parts(data_dir: Path, wall: FakeWall) -> AsyncIterator[tuple[EngineParts, CronModule]]:
    """The module as the engine builds it, on a real store in ``data_dir``."""
    store = SqliteStore(data_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        async with engine_parts([cron.SPEC], store=store) as parts:
            module = parts.modules["cron"]
            assert isinstance(module, CronModule) and isinstance(module.last_runs, StoreLastRuns)
            module.wall = wall
            yield parts, module
        nursery.cancel_scope.cancel()


async def test_last_runs_in_the_store_survive_a_reopen(tmp_path: Path) -> None:
    keys = [f"f{i}\x1f* * * * *\x1fUTC" for i in range(600)]  # more keys than one SELECT takes
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            store = SqliteStore(tmp_path, synchronous="normal")
            await nursery.start(store.run)
            runs = StoreLastRuns(store)
            await runs.prepare()
            async with trio.open_nursery() as writers:
                for i, key in enumerate(keys):
                    writers.start_soon(runs.set, key, 1000.0 + i)
            await runs.set(keys[0], 5.5)  # an update, not a second row
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            store = SqliteStore(tmp_path)
            await nursery.start(store.run)
            again = StoreLastRuns(store)
            await again.prepare()
            found = await again.get_many([*keys, "unknown"])
            assert len(found) == 600 and found[keys[0]] == 5.5 and found[keys[-1]] == 1599.0
            assert await again.get_many([]) == {}
            nursery.cancel_scope.cancel()


async def test_persistent_catch_up_on_a_real_store_after_a_restart(tmp_path: Path) -> None:
    """Real time, real SQLite file; the wall clock is faked so that "three days" pass at once."""
    config = {"expression": "0 2 * * *", "persistent": True}
    with trio.fail_after(30):
        wall = FakeWall(datetime(2026, 3, 1, 1, 59, 59, 700000, tzinfo=UTC).timestamp())
        async with stored_cron_parts(tmp_path, wall) as (parts, _module):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.daily", rec)
            await worker.register_trigger("cron", "w.daily", config)
            await rec.wait_called()
        wall.jump(3 * 86400)
        async with stored_cron_parts(tmp_path, wall) as (parts, _module):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.daily", rec)
            job_id = await worker.register_trigger("cron", "w.daily", config)
            await rec.wait_called()
            assert rec.calls[0]["catch_up"] is True and rec.calls[0]["scheduled_time"] == "2026-03-02T02:00:00Z"
            assert (await jobs(parts))[job_id]["last_run"]["catch_up"] is True
            await trio.sleep(0.3)
            assert len(rec.calls) == 1
        async with stored_cron_parts(tmp_path, wall) as (parts, _module):  # again at once: no second catch-up
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.daily", rec)
            await worker.register_trigger("cron", "w.daily", config)
            await trio.sleep(0.5)
            assert rec.calls == []


async def test_ticks_skipped_by_overlap_are_not_caught_up_after_a_restart(autojump_clock: Any) -> None:
    store = MemoryLastRuns()
    config = {"expression": "* * * * *", "persistent": True, "timeout_ms": 200_000}
    with trio.fail_after(4000):
        wall = FakeWall()
        async with cron_parts(wall, store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder(seconds=150)  # each run covers two more minute ticks
            await worker.register_function("w.long", rec)
            await worker.register_trigger("cron", "w.long", config)
            await trio.sleep(59.5 + 150.1)  # the 12:01 run ends at 12:03:30, 12:02 and 12:03 skipped
            assert len(rec.calls) == 1
            await trio.sleep(0.1)
        assert list(store.times.values()) == [datetime(2026, 3, 1, 12, 3, tzinfo=UTC).timestamp()]
        async with cron_parts(wall, store) as (parts, _module, _wall):  # back at 12:03:30
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.long", rec)
            await worker.register_trigger("cron", "w.long", config)
            await trio.sleep(1)
            assert rec.calls == []


async def test_a_catch_up_that_finds_no_function_stays_due(autojump_clock: Any) -> None:
    store = MemoryLastRuns()
    key_config = {"expression": "0 2 * * *", "persistent": True}
    covered = datetime(2026, 2, 27, 2, tzinfo=UTC).timestamp()
    store.times["w.daily\x1f0 2 * * *\x1fUTC"] = covered
    with trio.fail_after(4000):
        async with cron_parts(FakeWall(), store) as (parts, _module, _wall):
            host = await parts.worker("host")  # binds the trigger; w.daily's worker is not there
            await host.register_trigger("cron", "w.daily", key_config)
            await trio.sleep(1)
        assert store.times["w.daily\x1f0 2 * * *\x1fUTC"] == covered  # not marked as done
        async with cron_parts(FakeWall(), store) as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.daily", rec)
            await worker.register_trigger("cron", "w.daily", key_config)
            await trio.sleep(1)
            assert [c["scheduled_time"] for c in rec.calls] == ["2026-02-28T02:00:00Z"]
            assert rec.calls[0]["catch_up"] is True



async def test_the_triggers_metadata_comes_with_the_payload(autojump_clock: Any) -> None:
    from iii_supervisor.protocol import RegisterTrigger

    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.job", rec)
            worker.send(RegisterTrigger(id="m", trigger_type="cron", function_id="w.job",
                                        config={"expression": "* * * * * *"}, metadata={"team": "ops"}))
            await trio.sleep(1.2)
            assert rec.calls[0]["metadata"] == {"team": "ops"} and rec.calls[0]["job_id"] == "m"


async def test_persistent_catch_up_after_the_worker_was_down(autojump_clock: Any) -> None:
    config = {"expression": "* * * * *", "persistent": True}
    with trio.fail_after(4000):
        async with cron_parts() as (parts, _module, _wall):
            worker = await parts.worker("w")
            rec = Recorder()
            await worker.register_function("w.minute", rec)
            await worker.register_trigger("cron", "w.minute", config)
            await trio.sleep(60)  # the 12:01 run
            await worker.framed.aclose()  # its process exits; it is back after 12:02 and 12:03
            await trio.sleep(150)
            again = await parts.worker("w")
            await again.register_function("w.minute", rec)
            await again.register_trigger("cron", "w.minute", config)
            await trio.sleep(1)
            assert [(c["scheduled_time"], c.get("catch_up", False)) for c in rec.calls] == [
                ("2026-03-01T12:01:00Z", False), ("2026-03-01T12:02:00Z", True)]
            await trio.sleep(60)
            assert [c.get("catch_up", False) for c in rec.calls[2:]] == [False]  # then on schedule (12:04)
