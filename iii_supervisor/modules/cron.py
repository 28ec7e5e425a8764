"""The cron module: ``cron`` triggers run their function on a schedule (croniter).

Theory of operation
-------------------
Every job (one per ``cron`` trigger) sits in one heap ordered by its next fire time — the pure
:class:`~.cron_schedule.Timetable`, which makes every decision below — served by one scheduler
task: idle jobs cost a heap entry, not a task. Schedules follow the *wall clock*
(``wall_clock``, injected) while waits use trio's monotonic clock; the scheduler sleeps until the
earliest tick, converted to a monotonic deadline, and (while it has jobs) wakes at least every
``clock_check_interval`` to compare how far both clocks moved. A wall-clock step (NTP, ``date
-s``, suspend/resume) larger than ``clock_jump_threshold`` makes every job recompute its next
tick from now: no burst of missed ticks, no stall until the old time comes round again.

A due tick starts a run in the module's nursery unless the job's previous run is still going: then
the tick is skipped and counted (one log line when the run ends). A run calls the condition (if
any) and then the function through the invoker, with the job's deadline; errors are logged with
the job id, never retried.

``persistent`` jobs keep the time up to which their ticks are accounted for in :class:`LastRuns`
(the store); one whose tick was missed while the supervisor or its worker was down runs once as
soon as it is registered again, with ``"catch_up": true``. Pure decisions live in
:mod:`.cron_schedule`.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from ..config import Config, positive
from ..errors import EngineError, InvocationError, TriggerRegistrationError
from ..registry import Registry, TriggerEntry, TriggerTypeEntry
from .base import ModuleContext, ModuleSpec
from .cron_schedule import (
    JobConfig,
    Run,
    Slot,
    Timetable,
    catch_up_tick,
    count_ticks,
    parse_job_config,
    rfc3339,
    ticks_text,
)
from .cron_storage import StoreLastRuns

log = logging.getLogger(__name__)

WallClock = Callable[[], float]


@attrs.frozen(kw_only=True)
class CronConfig:
    """The ``[cron]`` config section."""

    #: Deadline of a run in milliseconds when its trigger sets no ``timeout_ms``
    #: (default: ``supervisor.invocation_timeout_ms``).
    default_timeout_ms: int | None = attrs.field(default=None)
    #: A wall clock that moves this many seconds more (or less) than the monotonic clock has
    #: jumped: every job's next tick is recomputed from now.
    clock_jump_threshold: float = attrs.field(default=2.0, validator=positive)
    #: While it has jobs, the scheduler looks at the wall clock at least this often (seconds), to
    #: notice jumps.
    clock_check_interval: float = attrs.field(default=1.0, validator=positive)

    @default_timeout_ms.validator
    def _check_timeout(self, _attr: Any, value: int | None) -> None:
        if value is not None and value <= 0:
            raise ValueError(f"cron.default_timeout_ms must be > 0, got {value!r}")


class LastRuns(Protocol):
    """Where persistent jobs keep the time up to which their ticks are accounted for."""

    async def prepare(self) -> None:
        """Called once before the module is ready (schema migrations)."""

    async def get_many(self, keys: list[str]) -> dict[str, float]: ...

    async def set(self, key: str, covered: float) -> None: ...


class MemoryLastRuns:
    """:class:`LastRuns` in memory (tests; a supervisor without a store)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    async def prepare(self) -> None:
        pass

    async def get_many(self, keys: list[str]) -> dict[str, float]:
        return {k: self.times[k] for k in keys if k in self.times}

    async def set(self, key: str, covered: float) -> None:
        self.times[key] = covered


@attrs.define(kw_only=True)
class LastRun:
    start: float
    duration: float | None = None
    #: "running", "ok", "error", "skipped" (condition false)
    status: str = "running"
    error: str | None = None
    catch_up: bool = False


@attrs.define(eq=False, kw_only=True)
class Job:
    trigger: TriggerEntry
    config: JobConfig
    #: its place in the timetable (next tick, running, skipped counts)
    slot: Slot
    #: (persistent jobs) the time up to which ticks are accounted for in the store
    covered: float | None = None
    last: LastRun | None = None

    @property
    def id(self) -> str:
        return self.trigger.id

    @property
    def removed(self) -> bool:
        return self.slot.removed

    @property
    def key(self) -> str:
        """What a persistent job is remembered by: trigger ids from the SDK are fresh per
        registration, so the function, expression and zone identify the job across restarts."""
        s = self.config.schedule
        return f"{self.trigger.function_id}\x1f{s.expression}\x1f{s.timezone}"


#: jobs seen, by key, remembered after they go (to log the ticks missed while away): bounded
_MEMORY = 10_000


class CronModule:
    def __init__(self, config: CronConfig, registry: Registry, invoker: Any, *, default_timeout: float,
                 last_runs: LastRuns | None = None, wall_clock: WallClock = time.time) -> None:
        self.config = config
        self.registry = registry
        self.invoker = invoker
        self.default_timeout = default_timeout
        self.last_runs: LastRuns = last_runs if last_runs is not None else MemoryLastRuns()
        self.wall = wall_clock
        self.jobs: dict[str, Job] = {}
        self.timetable = Timetable(jump_threshold=config.clock_jump_threshold)
        self._wake: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._restore: list[Job] = []
        self._restore_wake = trio.Event()
        #: job key → wall time up to which its ticks were accounted for, for jobs that went away
        self._gone: collections.OrderedDict[str, float] = collections.OrderedDict()

    # --- the trigger provider (synchronous: called by the registry) --------------------------

    def register(self, trigger: TriggerEntry) -> None:
        now = self.wall()
        try:
            config = parse_job_config(trigger.config, now=now)
        except TriggerRegistrationError as exc:
            raise TriggerRegistrationError(f"cron trigger {trigger.id!r} for {trigger.function_id!r}: "
                                           f"{exc.message}") from None
        job = Job(trigger=trigger, config=config,
                  slot=Slot(schedule=config.schedule, persistent=config.persistent))
        job.slot.job = job
        self.jobs[trigger.id] = job
        gone_until = self._gone.pop(job.key, None)
        if config.persistent:
            # scheduled once its last run is read from the store (see _restorer): a tick that came
            # first would run as an ordinary one, and the missed tick's catch-up would be lost
            self._restore.append(job)
            self._restore_wake.set()
            return
        if gone_until is not None:
            missed = count_ticks(config.schedule, gone_until, now)
            if missed:
                log.info("cron job %s (%s): %s tick(s) skipped while it was not registered (its worker was "
                         "down?); set persistent = true to catch up", job.id, trigger.function_id, ticks_text(missed))
        self._schedule(job, now)

    def _schedule(self, job: Job, now: float) -> None:
        if self.timetable.add(job.slot, now) and self._wake is not None:
            self._wake.cancel()  # an earlier tick than the one the scheduler sleeps for

    def unregister(self, trigger: TriggerEntry) -> None:
        job = self.jobs.pop(trigger.id, None)
        if job is None:
            return
        self.timetable.remove(job.slot)  # a run in progress ends on its own
        self._gone[job.key] = self.wall()
        while len(self._gone) > _MEMORY:
            self._gone.popitem(last=False)

    # --- scheduling ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.registry.add_builtin("engine::cron::list", self._list,
                                  "List cron jobs: expression, time zone, next and last run, skipped ticks")
        await self.last_runs.prepare()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._restorer)
            self.registry.add_trigger_type(TriggerTypeEntry(
                "cron", "Run a function on a schedule (config.expression: cron, 5/6/7 fields or @daily …)", self))
            task_status.started()
            await self._scheduler()

    async def _scheduler(self) -> None:
        timetable = self.timetable
        while True:
            wall, mono = self.wall(), trio.current_time()
            due = timetable.advance(wall, mono)
            if due.jump is not None:
                log.warning("cron: the wall clock jumped %+.1fs; next ticks recomputed from %s", due.jump,
                            rfc3339(wall))
            for slot, late, missed in due.late:
                log.warning("cron job %s: the scheduler was %.1fs late; %s tick(s) not run", slot.job.id, late,
                            ticks_text(missed))
            for run in due.runs:
                self._start(run)
            with trio.CancelScope(deadline=mono + timetable.delay(wall, self.config.clock_check_interval)) as scope:
                self._wake = scope
                await trio.sleep_forever()
            self._wake = None

    def _start(self, run: Run) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._run_job, run.slot.job, run.scheduled, run.catch_up)

    # --- runs ---------------------------------------------------------------------------------

    def _payload(self, job: Job, scheduled: float, actual: float, catch_up: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {"trigger": "cron", "job_id": job.id, "scheduled_time": rfc3339(scheduled),
                                   "actual_time": rfc3339(actual)}
        if catch_up:
            payload["catch_up"] = True
        if job.trigger.metadata:
            payload["metadata"] = job.trigger.metadata
        return payload

    async def _run_job(self, job: Job, scheduled: float, catch_up: bool) -> None:
        start, mono = self.wall(), trio.current_time()
        job.last = last = LastRun(start=start, catch_up=catch_up)
        trigger, config = job.trigger, job.config
        timeout = config.timeout or self.default_timeout
        payload = self._payload(job, scheduled, start, catch_up)
        previous = job.covered
        missing = False
        try:
            if config.persistent:
                # before the call: a crash during the run must not make it run again at restart
                await self._remember(job, start if catch_up else scheduled)
            deadline = mono + timeout
            if config.condition_function_id is not None:
                allowed = await self.invoker.call(config.condition_function_id, payload, timeout=timeout,
                                                  metadata=trigger.metadata)
                if not allowed:
                    last.status = "skipped"
                    log.debug("cron job %s: condition %r returned %r; tick skipped", job.id,
                              config.condition_function_id, allowed)
                    return
            await self.invoker.call(trigger.function_id, payload, timeout=max(deadline - trio.current_time(), 0.001),
                                    metadata=trigger.metadata)
            last.status = "ok"
        except InvocationError as exc:
            last.status, last.error = "error", f"{exc.code}: {exc.message}"
            if exc.code == "function_not_found":
                missing = True
                log.warning("cron job %s: tick %s skipped: %s (is its worker down?)", job.id, rfc3339(scheduled),
                            exc.message)
            else:
                log.error("cron job %s (%s) failed: %s: %s", job.id, trigger.function_id, exc.code, exc.message)
        except EngineError as exc:  # the store failed: the run did not happen, the module goes on
            last.status, last.error = "error", f"{type(exc).__name__}: {exc}"
            log.error("cron job %s: tick %s not run: %s", job.id, rfc3339(scheduled), last.error)
        finally:
            last.duration = trio.current_time() - mono
            covered: float | None = None
            if missing and previous is not None:
                covered = previous  # the function was away: the tick still counts as missed (catch-up later)
            skipped = self.timetable.end(job.slot)
            if skipped:
                log.warning("cron job %s (%s): %d tick(s) skipped while the run of %s was still going (%.1fs)",
                            job.id, trigger.function_id, skipped, rfc3339(scheduled), last.duration)
                covered = job.slot.last_skipped  # skipped while we were up: nothing to catch up after a restart
            if config.persistent and covered is not None and not job.removed:
                assert self._nursery is not None
                self._nursery.start_soon(self._remember_quietly, job, covered)

    async def _remember(self, job: Job, covered: float) -> None:
        await self.last_runs.set(job.key, covered)
        job.covered = covered

    async def _restorer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the last runs of newly registered persistent jobs (in batches) and catch up."""
        task_status.started()
        while True:
            await self._restore_wake.wait()
            self._restore_wake = trio.Event()
            batch, self._restore = self._restore, []
            keys = list({job.key for job in batch})
            try:
                known = await self.last_runs.get_many(keys)
            except EngineError as exc:
                log.error("cron: cannot read the last runs of %d persistent job(s): %s: %s; they run from now on "
                          "without catching up", len(batch), type(exc).__name__, exc)
                now = self.wall()
                for job in batch:
                    if not job.removed:
                        self._schedule(job, now)
                continue
            now = self.wall()
            for job in batch:
                self._restored(job, known.get(job.key), now)

    def _restored(self, job: Job, covered: float | None, now: float) -> None:
        if job.removed:
            return  # gone again
        job.covered = covered
        if covered is None:  # first seen: ticks from now on are accounted for
            assert self._nursery is not None
            self._nursery.start_soon(self._remember_quietly, job, now)
        else:
            missed = catch_up_tick(job.config.schedule, covered, now)
            if missed is not None:
                log.info("cron job %s (%s): catching up the tick of %s missed while it was down", job.id,
                         job.trigger.function_id, rfc3339(missed))
                run = self.timetable.begin(job.slot, missed, catch_up=True)
                if run is not None:
                    self._start(run)
        self._schedule(job, now)  # (while the catch-up runs, the ticks that fall skip as usual)

    async def _remember_quietly(self, job: Job, covered: float) -> None:
        try:
            await self._remember(job, covered)
        except EngineError as exc:
            log.error("cron job %s: cannot record it in the store: %s: %s", job.id, type(exc).__name__, exc)

    # --- engine::cron::list -------------------------------------------------------------------

    async def _list(self, _data: Any) -> dict[str, Any]:
        jobs = sorted(self.jobs.values(), key=lambda j: (j.slot.next_tick, j.id))  # the next to run first
        return {"jobs": [self._describe(job) for job in jobs]}

    def _describe(self, job: Job) -> dict[str, Any]:
        schedule, slot = job.config.schedule, job.slot
        nxt = slot.next_tick
        last = job.last
        return {
            "job_id": job.id,
            "function_id": job.trigger.function_id,
            "worker_name": job.trigger.owner.name if job.trigger.owner is not None else "engine",
            "expression": schedule.expression,
            "timezone": schedule.timezone,
            "persistent": job.config.persistent,
            "next_run": rfc3339(nxt) if nxt != math.inf else None,
            "next_run_local": schedule.local(nxt).isoformat() if nxt != math.inf else None,
            "running": slot.running,
            "last_run": None if last is None else {
                "start": rfc3339(last.start),
                "duration_ms": round(last.duration * 1000, 1) if last.duration is not None else None,
                "status": last.status, "error": last.error, "catch_up": last.catch_up},
            "skipped_ticks": slot.skipped,
        }


def build(ctx: ModuleContext, config: CronConfig) -> CronModule:
    default = (config.default_timeout_ms or ctx.config.supervisor.invocation_timeout_ms) / 1000
    last_runs: LastRuns = StoreLastRuns(ctx.store) if ctx.store is not None else MemoryLastRuns()
    return CronModule(config, ctx.registry, ctx.invoker, default_timeout=default, last_runs=last_runs)


# --- the CLI: ``iii-supervisor cron ls`` ----------------------------------------------------------


def _cmd_ls(args: argparse.Namespace, config: Config) -> int:
    from ..clitools import control_client, print_json, table

    with control_client(args, config) as client:
        jobs = client.call("engine::cron::list")["jobs"]
    if args.json:
        print_json(jobs)
        return 0
    rows = []
    for job in jobs:
        last = job["last_run"]
        rows.append([
            job["job_id"], job["function_id"], job["expression"], job["timezone"],
            job["next_run"] or "-", _local(job["next_run_local"]) if job["timezone"] != "UTC" else "",
            last["start"] if last else "-",
            f"{last['duration_ms'] / 1000:.2f}s" if last and last["duration_ms"] is not None else "-",
            (last["status"] + (" (catch-up)" if last["catch_up"] else "")) if last else "-",
            str(job["skipped_ticks"]),
        ])
    print(table(["JOB", "FUNCTION", "EXPRESSION", "TZ", "NEXT (UTC)", "NEXT (LOCAL)", "LAST RUN", "DURATION",
                 "RESULT", "SKIPPED"], rows))
    return 0


def _local(iso: str | None) -> str:
    return iso.replace("T", " ") if iso else "-"


def _add_commands(sub: Any) -> None:
    from ..clitools import add_common

    cron = sub.add_parser("cron", help="cron jobs of a running supervisor")
    cron_sub = cron.add_subparsers(dest="cron_command", required=True)
    ls = cron_sub.add_parser("ls", help="list cron jobs: schedule, next and last run, skipped ticks")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common(ls)
    ls.set_defaults(func=_cmd_ls)


SPEC = ModuleSpec(
    name="cron",
    section="cron",
    config_type=CronConfig,
    build=build,
    add_commands=_add_commands,
    uses_store=True,
)
