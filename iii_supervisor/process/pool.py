"""The worker pool: one supervising task per worker program, restarts with backoff, status.

Each worker gets, per spawn, a fresh secret token in ``III_WORKER_TOKEN``; the worker socket
accepts a connection only if its first frame presents the token of a worker that is running
now, so a lingering old instance cannot impersonate its replacement. When the process exits,
its session is closed at once (functions and triggers removed, calls in flight failed) and the
restart is scheduled by :class:`~.policy.RestartTracker`.
"""

from __future__ import annotations

import enum
import hmac
import logging
import math
import os
import random
import secrets
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..output import Output
from ..worker_lines import WorkerLines
from .policy import BackoffPolicy, RestartTracker
from .reaper import Reaper
from .resources import SAMPLES_OVER, Sample, Sampler, over_limit
from .runner import WorkerProcess, WorkerSpec, run_worker_process
from .settings import program_fingerprint

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger(__name__)

#: Variables of the supervisor's own environment that must not leak into workers.
_PRIVATE_ENV_PREFIXES = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_", "III_")


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, not yet connected
    RUNNING = "running"  # connected and registered
    BACKOFF = "backoff"  # exited; waiting to restart
    STOPPING = "stopping"
    STOPPED = "stopped"  # not running, and not restarted until asked (stop, enabled = false, restart policy)
    FATAL = "fatal"  # crash loop: restart intensity exceeded; not restarted until asked


@attrs.define(eq=False)
class WorkerSlot:
    spec: WorkerSpec
    tracker: RestartTracker
    #: which instance of the program (None: it has one)
    instance: int | None = None
    state: WorkerState = WorkerState.STOPPED
    pid: int | None = None
    token: str | None = None
    session: Session | None = None
    started_at: float | None = None
    last_exit: int | None = None
    restart_requested: bool = False
    #: why the worker is not run now ("stopped", "fatal"), or None: keep it running
    held: str | None = None
    #: set when the current run has finished starting (connected, registered, said ready)
    ready: trio.Event = attrs.Factory(trio.Event)
    #: the last resource sample of the current run (None before the first)
    sample: Sample | None = None
    #: samples in a row with the RSS above ``spec.max_rss``
    rss_over: int = 0
    #: the program's files when it was last spawned (reload restarts it when they changed)
    fingerprint: object = None
    #: removed from the config/directory by a reload: its task ends once it is stopped
    removed: bool = False
    #: set to stop the current run gracefully
    stop: trio.Event = attrs.Factory(trio.Event)
    #: set to cut a backoff wait short
    wake: trio.Event = attrs.Factory(trio.Event)

    @property
    def name(self) -> str:
        return self.spec.name if self.instance is None else f"{self.spec.name}:{self.instance}"


def slots_of(spec: WorkerSpec, policy: BackoffPolicy) -> list[WorkerSlot]:
    """One slot per instance: ``api``, or ``api:0``, ``api:1`` … with ``instances`` > 1."""
    if spec.instances == 1:
        return [WorkerSlot(spec, RestartTracker(policy))]
    return [WorkerSlot(spec, RestartTracker(policy), instance=i) for i in range(spec.instances)]


class WorkerPool:
    def __init__(
        self,
        specs: list[WorkerSpec],
        *,
        socket_path: Path,
        policy: BackoffPolicy,
        grace: float,
        output: Output,
        base_env: Mapping[str, str] | None = None,
        reaper: Reaper | None = None,
        start_timeout: float = 0.0,
        ping_interval: float = 0.0,
        ping_timeout: float = 20.0,
        sample_interval: float = 5.0,
        lines: WorkerLines | None = None,
    ) -> None:
        self.slots = {slot.name: slot for spec in specs for slot in slots_of(spec, policy)}
        self.socket_path = socket_path
        self.grace = grace
        self.output = output
        #: every line a worker prints also goes here (the log module listens)
        self.lines = lines
        env = dict(os.environ if base_env is None else base_env)
        self._base_env = {k: v for k, v in env.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
        self._stopping = False
        #: told about every worker's process group, so that none outlives a killed supervisor
        self.reaper = reaper
        self.start_timeout = start_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.sample_interval = sample_interval
        self._sampler = Sampler()
        self._nursery: trio.Nursery | None = None
        #: removed slots whose worker is still stopping while a new one of that name runs
        self._retiring: set[WorkerSlot] = set()
        self._sample_soon = trio.Event()
        #: the iii door's address when it is on: spawned workers get it as ``III_URL``, and their
        #: per-spawn token as ``III_TOKEN`` (the official SDK presents it on every socket)
        self.door_url: str | None = None
        #: workers connected through the iii door that the supervisor did not spawn, by worker id
        #: (each has a ``status_row()``)
        self.attached: dict[str, Any] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Spawn every worker, then supervise them until cancelled (which stops them all)."""
        async with trio.open_nursery() as outer:
            await outer.start(self._sample_resources)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for slot in list(self.slots.values()):
                    await nursery.start(self._supervise, slot)
                task_status.started()
            outer.cancel_scope.cancel()  # every worker is stopped: nothing left to sample

    async def _sample_resources(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every ``sample_interval`` (and soon after a worker became ready): RSS and CPU of every
        worker, read in one thread; restart workers whose RSS stays above their ``max_rss``."""
        limiter = trio.CapacityLimiter(1)  # one sampling thread at a time, never the loop
        task_status.started()
        while True:
            with trio.move_on_after(self.sample_interval):
                await self._sample_soon.wait()
            self._sample_soon = trio.Event()
            pids = {slot.pid for slot in self.slots.values() if slot.pid is not None}
            samples = await trio.to_thread.run_sync(self._sampler.sample, pids, limiter=limiter)
            for slot in self.slots.values():
                sample = samples.get(slot.pid) if slot.pid is not None else None
                slot.sample = sample
                limit = slot.spec.max_rss
                slot.rss_over = over_limit(slot.rss_over, sample.rss if sample else None, limit)
                if slot.rss_over == SAMPLES_OVER and sample is not None and limit is not None:
                    log.warning("worker %s: RSS %s is above max_rss %s (%d samples in a row); restarting it",
                                slot.name, _mib(sample.rss), _mib(limit), SAMPLES_OVER)
                    slot.stop.set()  # graceful; counts as a failure (backoff, intensity)

    def stop_all(self) -> None:
        """Begin a graceful stop: no more restarts; each running worker gets SIGTERM."""
        self._stopping = True
        for slot in [*self.slots.values(), *self._retiring]:
            slot.wake.set()
            slot.stop.set()
            if slot.pid is not None:
                slot.state = WorkerState.STOPPING

    def _slots(self, name: str) -> list[WorkerSlot]:
        """``api:1`` is that instance; ``api`` is every instance of ``api``."""
        slot = self.slots.get(name)
        if slot is not None:
            return [slot]
        group = [s for s in self.slots.values() if s.spec.name == name]
        if not group:
            raise KeyError(name)
        return group

    def restart(self, name: str) -> list[WorkerSlot]:
        """Stop the worker (gracefully) and start it again at once, without backoff. A stopped or
        FATAL worker just starts (its crash history is forgotten)."""
        slots = self._slots(name)
        for slot in slots:
            if slot.held is not None:
                self.start(slot.name)
                continue
            slot.restart_requested = True
            slot.wake.set()
            slot.stop.set()
        return slots

    def start(self, name: str) -> list[WorkerSlot]:
        """Start a stopped, disabled or FATAL worker (a running one is left alone)."""
        slots = self._slots(name)
        for slot in slots:
            if slot.held is not None:
                if slot.held == "fatal":
                    log.info("worker %s: FATAL cleared on request", slot.name)
                slot.held = None
                slot.tracker.clear()
            slot.wake.set()  # also cuts a backoff wait short
        return slots

    def stop(self, name: str) -> list[WorkerSlot]:
        """Stop the worker gracefully and keep it stopped (until ``start``/``restart``)."""
        slots = self._slots(name)
        for slot in slots:
            slot.held = "stopped"
            slot.restart_requested = False
            slot.wake.set()
            slot.stop.set()
            if slot.pid is not None:
                slot.state = WorkerState.STOPPING
        return slots

    # --- one worker ---------------------------------------------------------------------------

    def _env(self, slot: WorkerSlot) -> dict[str, str]:
        assert slot.token is not None
        return {
            **self._base_env,
            **slot.spec.env,
            "III_SOCKET": str(self.socket_path),
            "III_WORKER_NAME": slot.spec.name,
            **({"III_WORKER_INSTANCE": str(slot.instance)} if slot.instance is not None else {}),
            "III_WORKER_TOKEN": slot.token,
            # the official SDKs: the Python one sends $III_TOKEN as a bearer header, the Node one
            # only the URL (whose query both keep on every socket they open)
            **({"III_URL": f"{self.door_url}/?token={slot.token}", "III_TOKEN": slot.token}
               if self.door_url is not None else {}),
            "PYTHONUNBUFFERED": "1",
        }

    async def _supervise(self, slot: WorkerSlot, *, task_status: trio.TaskStatus[None]) -> None:
        reported = False

        def report_started() -> None:  # the pool is "started" once every worker was spawned once
            nonlocal reported
            if not reported:
                reported = True
                task_status.started()

        if not slot.spec.enabled:
            slot.held = "stopped"
        while not self._stopping and not slot.removed:
            if slot.held is not None:  # stopped, disabled, or FATAL: wait for start/restart
                slot.state = WorkerState.FATAL if slot.held == "fatal" else WorkerState.STOPPED
                report_started()
                slot.wake = trio.Event()
                await slot.wake.wait()
                continue
            slot.fingerprint = await trio.to_thread.run_sync(program_fingerprint, slot.spec)
            slot.token = secrets.token_urlsafe(32)
            slot.state = WorkerState.STARTING
            slot.wake = trio.Event()
            slot.stop = trio.Event()
            slot.ready = trio.Event()
            slot.sample, slot.rss_over = None, 0
            slot.restart_requested = False
            returncode: int | None = None
            spawned_at = trio.current_time()
            try:
                returncode = await self._run_once(slot, report_started)
            except OSError as exc:
                log.error("worker %s could not be started (%s): %s", slot.name, " ".join(slot.spec.command), exc)
            report_started()
            self._detach(slot)
            slot.token = None
            slot.pid = None
            if returncode is not None:
                slot.last_exit = returncode
            if self._stopping or slot.removed:
                break
            if slot.restart_requested:
                log.info("worker %s restarting on request", slot.name)
                slot.tracker.restarts += 1
                continue
            if slot.held is not None:  # stopped on request
                log.info("worker %s stopped on request", slot.name)
                continue
            mode = slot.spec.restart
            if mode == "never" or (mode == "on-failure" and returncode == 0):
                log.info("worker %s %s; not restarted (restart = %r)", slot.name, _describe_exit(returncode), mode)
                slot.held = "stopped"
                continue
            delay = slot.tracker.on_exit(started_at=spawned_at, now=trio.current_time(), rand=random.random())
            if delay is None:
                policy = slot.tracker.policy
                log.error("worker %s %s; FATAL: more than %d restarts within %gs, not restarting it "
                          "(`iii-supervisor restart %s` starts it again)", slot.name, _describe_exit(returncode),
                          policy.max_restarts, policy.restart_window, slot.name)
                slot.held = "fatal"
                continue
            slot.state = WorkerState.BACKOFF
            log.warning("worker %s %s; restart #%d in %.1fs", slot.name, _describe_exit(returncode),
                        slot.tracker.restarts, delay)
            with trio.move_on_after(delay):
                await slot.wake.wait()
        slot.state = WorkerState.STOPPED
        report_started()
        self._retiring.discard(slot)
        if slot.removed and self.slots.get(slot.name) is slot:
            del self.slots[slot.name]
            log.info("worker %s removed", slot.name)

    # --- reload -------------------------------------------------------------------------------

    async def reload(self, specs: list[WorkerSpec], policy: BackoffPolicy) -> dict[str, list[str]]:
        """Make the pool run ``specs``: start new workers (and instances), stop removed ones,
        restart those whose settings or program files changed; leave the others alone. Returns
        what was done, by slot name (``api``, ``api:1``)."""
        assert self._nursery is not None, "the pool is not running"
        new = {slot.name: slot for spec in specs for slot in slots_of(spec, policy)}
        done: dict[str, list[str]] = {"added": [], "removed": [], "restarted": [], "unchanged": []}
        for name, slot in list(self.slots.items()):
            if name not in new and not slot.removed:
                slot.removed = True
                self.stop(name)
                done["removed"].append(name)
        for name, fresh in new.items():
            spec = fresh.spec
            existing = self.slots.get(name)
            if existing is None or existing.removed:
                if existing is not None:  # removed, still stopping: let it go, run the new one beside
                    self._retiring.add(existing)
                    del self.slots[name]
                self.slots[name] = fresh
                await self._nursery.start(self._supervise, fresh)
                done["added"].append(name)
                continue
            slot = existing
            slot.tracker.policy = policy
            files = await trio.to_thread.run_sync(program_fingerprint, spec)
            # (a new instance count alone does not restart the instances that stay)
            changed = (attrs.evolve(spec, instances=1) != attrs.evolve(slot.spec, instances=1)
                       or (slot.pid is not None and files != slot.fingerprint))
            slot.spec = spec
            if not changed:
                done["unchanged"].append(name)
            elif not spec.enabled:
                self.stop(name)
                done["restarted" if slot.pid is not None else "unchanged"].append(name)
            elif slot.held == "stopped" and slot.pid is None and spec.enabled:
                self.start(name)  # enabled now (or its settings changed while stopped)
                done["restarted"].append(name)
            else:
                self.restart(name)
                done["restarted"].append(name)
        return done

    async def _run_once(self, slot: WorkerSlot, report_started: Callable[[], None]) -> int:
        watched: int | None = None
        try:
            async with trio.open_nursery() as nursery:
                worker: WorkerProcess = await nursery.start(
                    partial(run_worker_process, slot.spec, self._env(slot), self.output,
                            grace=slot.spec.grace_period or self.grace, stop=slot.stop,
                            lines=self.lines))
                slot.pid = watched = worker.pid
                if self.reaper is not None:
                    self.reaper.watch(worker.pid)  # its pid is its process group's id
                slot.started_at = trio.current_time()
                log.info("worker %s started (pid %d)", slot.name, worker.pid)
                report_started()
                watchers = trio.CancelScope()
                nursery.start_soon(self._watch_run, slot, watchers)
                await worker.exited.wait()
                watchers.cancel()
                # Gone: its token must not authenticate anyone, its registrations go now, not
                # after the output pipes drain.
                slot.token = None
                self._detach(slot)
        finally:
            if watched is not None and self.reaper is not None:
                self.reaper.forget(watched)  # reaped (run_worker_process returned): the id may be reused
        assert worker.proc.returncode is not None
        return worker.proc.returncode

    async def _watch_run(self, slot: WorkerSlot, scope: trio.CancelScope) -> None:
        """Restart a worker that does not finish starting within its start timeout, or that
        stops answering pings (a blocked event loop, SIGSTOP): it is hung."""
        with scope:
            timeout = slot.spec.start_timeout if slot.spec.start_timeout is not None else self.start_timeout
            with trio.move_on_after(timeout or math.inf):
                await slot.ready.wait()
            if not slot.ready.is_set():
                how = "registering" if slot.session is not None else "connecting"
                log.warning("worker %s did not finish starting within %gs (still %s; the SDK says it is ready "
                            "when the script's main code ends, or on iii.ready()); restarting it",
                            slot.name, timeout, how)
                slot.stop.set()
                return
            while self.ping_interval:
                await trio.sleep(self.ping_interval)
                session = slot.session
                if session is None:
                    continue
                answered = session.ping()
                with trio.move_on_after(self.ping_timeout):
                    await answered.wait()
                if not answered.is_set() and slot.session is session:
                    log.warning("worker %s did not answer a ping within %gs (its event loop is blocked, or it is "
                                "stopped); restarting it", slot.name, self.ping_timeout)
                    slot.state = WorkerState.STOPPING
                    slot.stop.set()
                    return

    def _detach(self, slot: WorkerSlot) -> None:
        session, slot.session = slot.session, None
        if session is not None:
            session.close()

    # --- the worker socket asks ---------------------------------------------------------------

    def authenticate(self, token: str) -> WorkerSlot | None:
        """The slot whose *current* spawn holds ``token`` (constant-time compare)."""
        found = None
        # bytes: compare_digest raises TypeError on a str that is not ASCII, which any client
        # can present (a WebSocket bearer header, a percent-encoded ?token=, a hello's token)
        presented = token.encode("utf-8", "replace")
        for slot in self.slots.values():
            if slot.token is not None and hmac.compare_digest(slot.token.encode(), presented):
                found = slot
        return found

    def attach(self, slot: WorkerSlot, session: Session) -> None:
        """The worker connected; it is ``running`` once it says it is ready (``workerready``)."""
        slot.session = session
        session.on_ready = partial(self._on_ready, slot, session)

    def _on_ready(self, slot: WorkerSlot, session: Session) -> None:
        if slot.session is session and not slot.ready.is_set():
            slot.ready.set()
            self._sample_soon.set()  # its first figures for status
            if slot.state is WorkerState.STARTING:
                slot.state = WorkerState.RUNNING
            log.info("worker %s ready (%d function(s))", slot.name, len(session.registry.functions_of(session)))

    def detach(self, slot: WorkerSlot, session: Session) -> None:
        """``session`` ended while its process may live on: it may connect again."""
        if slot.session is session:
            slot.session = None

    # --- status -------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        rows = []
        for slot in self.slots.values():
            session = slot.session
            rows.append({
                "name": slot.name,
                "pid": slot.pid,
                "state": slot.state.value,
                "restarts": slot.tracker.restarts,
                "uptime_s": round(now - slot.started_at, 3) if slot.pid and slot.started_at is not None else None,
                "functions": session.registry.functions_of(session) if session else [],
                "rss_bytes": slot.sample.rss if slot.sample else None,
                "cpu_percent": round(slot.sample.cpu_percent, 1) if slot.sample else None,
                "in_flight": session.invoker.in_flight(session) if session else 0,
                "last_exit": slot.last_exit,
                "last_exit_reason": _describe_exit(slot.last_exit) if slot.last_exit is not None else None,
                "max_rss": slot.spec.max_rss,
                "worker_id": session.worker_id if session else None,
                "path": str(slot.spec.path),
            })
        rows.extend(session.status_row() for session in self.attached.values())
        return rows


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}MiB"


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "could not be started"
    if returncode < 0:
        try:
            import signal

            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"
