"""The composition root: the one place where the parts are built and wired together.

``Engine.run`` takes the runtime directory lock, starts each long-lived part with
``nursery.start`` (so each is ready before the next one starts), tells systemd it is ready, then
waits for SIGINT/SIGTERM (or :meth:`Engine.stop`). Shutdown is ordered: workers are stopped
gracefully first (SIGTERM, grace, SIGKILL), then the sockets close and the lock is released.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path

import attrs
import trio

from .builtins import install_builtins
from .channels import ChannelTable
from .config import Config, load_config
from .errors import ConfigError, InvocationError
from .invocation import Invoker
from .modules import cron, external, metrics, pubsub, queue, state, stream
from .modules import log as log_module
from .modules.base import Module, ModuleContext, ModuleSpec
from .output import Output, default_output
from .process.pool import WorkerPool
from .process.reaper import Reaper
from .process.runner import discover_workers
from .process.settings import worker_specs
from .registry import Registry
from .server import http, iii_door
from .server.sockets import SessionServer, SocketLimits, serve_unix
from .server.unix import CONTROL_SOCKET, WORKER_SOCKET, RuntimeLock, prepare_runtime_dir, resolve_runtime_dir
from .store import SqliteStore, resolve_data_dir
from .systemd import run_watchdog, sd_notify
from .worker_lines import WorkerLines

log = logging.getLogger(__name__)

#: Every in-process module, in start order (see modules/base.py). Adding a module is one line here.
MODULES: tuple[ModuleSpec, ...] = (
    http.SPEC,
    log_module.SPEC,
    queue.SPEC,
    state.SPEC,
    stream.SPEC,
    pubsub.SPEC,
    cron.SPEC,
    metrics.SPEC,
    external.SPEC,
    iii_door.SPEC,
)


class Engine:
    def __init__(self, config: Config, workers_dir: Path, *, runtime_dir: Path | None = None,
                 data_dir: Path | None = None, output: Output | None = None,
                 config_path: Path | None = None) -> None:
        self.config = config
        self.workers_dir = workers_dir
        #: the file ``reload`` (SIGHUP) reads again (None: the defaults), and what it said last
        #: (before command-line flags: a reload compares files, not flags)
        self.config_path = config_path
        self._file_config = load_config(config_path) if config_path is not None else Config()
        self.runtime_dir = prepare_runtime_dir(resolve_runtime_dir(config.supervisor.runtime_dir, runtime_dir))
        self.worker_socket = self.runtime_dir / WORKER_SOCKET
        self.control_socket = self.runtime_dir / CONTROL_SOCKET
        sup = config.supervisor
        self.registry = Registry()
        self.invoker = Invoker(self.registry, default_timeout=sup.invocation_timeout_ms / 1000,
                               max_backlog=sup.max_queued_bytes)
        specs = worker_specs(discover_workers(workers_dir), config.workers, workers_dir)
        self.output = output or default_output()
        self.worker_lines = WorkerLines()
        self.reaper = Reaper()
        self.pool = WorkerPool(specs, socket_path=self.worker_socket, policy=config.restart,
                               grace=sup.grace_period, output=self.output, lines=self.worker_lines,
                               reaper=self.reaper, start_timeout=sup.start_timeout,
                               ping_interval=sup.ping_interval, ping_timeout=sup.ping_timeout,
                               sample_interval=sup.sample_interval)
        self.channels = ChannelTable()
        install_builtins(self.registry, self.pool, self.invoker.stats)
        self.registry.add_builtin("engine::reload", self._reload_builtin,
                                  "Re-read the config and rescan the workers directory (what SIGHUP does)")
        self._reloading = trio.Lock()
        #: the embedded store, opened (lock, integrity check) by run() before any module starts
        self.store: SqliteStore | None = None
        if any(spec.uses_store for spec in MODULES):
            self.store = SqliteStore(resolve_data_dir(data_dir, sup.data_dir),
                                     synchronous=sup.store_synchronous)  # type: ignore[arg-type]
        context = ModuleContext(registry=self.registry, invoker=self.invoker, channels=self.channels, config=config,
                                runtime_dir=self.runtime_dir, store=self.store, worker_lines=self.worker_lines,
                                pool=self.pool)
        self.modules: dict[str, Module] = {spec.name: spec.build(context, config.section(spec.section))
                                           for spec in MODULES}
        self.limits = SocketLimits(max_frame_size=sup.max_frame_size, handshake_timeout=sup.handshake_timeout)
        self.server = SessionServer(self.registry, self.invoker, self.channels, self.pool, self.limits)
        self._stop = trio.Event()
        self._lock = RuntimeLock(self.runtime_dir)

    def stop(self) -> None:
        """Ask :meth:`run` to shut down gracefully (what SIGTERM does)."""
        self._stop.set()

    async def run(self, *, handle_signals: bool = True,
                  task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED) -> None:
        self._lock.acquire()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.output.run)  # first in, last out: it writes the others' lines
                if handle_signals:
                    await nursery.start(self._watch_signals)
                await nursery.start(self.invoker.run)
                if self.store is not None:  # refuses to start on a locked, unwritable or corrupt data dir
                    await nursery.start(self.store.run)
                await nursery.start(serve_unix, self.worker_socket, self.server.handle_worker, self.limits)
                await nursery.start(serve_unix, self.control_socket, self.server.handle_control, self.limits)
                for module in self.modules.values():  # each is ready (its types and functions in) before the next
                    await nursery.start(module.run)
                await nursery.start(self.reaper.run)  # before any worker: none may outlive us
                pool_done = trio.Event()
                await nursery.start(self._run_pool, pool_done)
                await nursery.start(run_watchdog)
                names = ", ".join(self.pool.slots) or "none"
                log.info("iii-supervisor ready: %d worker(s) [%s]; worker socket %s; control socket %s",
                         len(self.pool.slots), names, self.worker_socket, self.control_socket)
                sd_notify("READY=1", f"STATUS={len(self.pool.slots)} worker(s) started")
                task_status.started(self)
                await self._stop.wait()
                log.info("stopping: sending SIGTERM to every worker (grace %.1fs)", self.config.supervisor.grace_period)
                sd_notify("STOPPING=1")
                self.pool.stop_all()
                with trio.move_on_after(self.config.supervisor.grace_period + 5):
                    await pool_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._lock.release()
        log.info("iii-supervisor stopped")

    async def _run_pool(self, done: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await self.pool.run(task_status=task_status)
        finally:
            done.set()

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    with contextlib.suppress(ConfigError):  # refused and logged: the running set stays
                        await self.reload()
                else:
                    self.stop()

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the config file and rescan the workers directory; apply the worker changes
        (new ones start, removed ones stop, changed ones restart, the others run on). A bad
        config is refused (:class:`ConfigError`) and nothing changes. Other sections are not
        reloaded (the HTTP front keeps its address, …): a warning says so."""
        async with self._reloading:
            source = str(self.config_path) if self.config_path else "the defaults"
            try:
                config = load_config(self.config_path)
                specs = worker_specs(discover_workers(self.workers_dir), config.workers, self.workers_dir)
            except ConfigError as exc:
                log.error("reload refused, the running workers are unchanged: %s", exc.message)
                raise
            except OSError as exc:
                log.error("reload refused, the running workers are unchanged: cannot scan %s: %s",
                          self.workers_dir, exc.strerror)
                raise ConfigError(f"cannot scan the workers directory {str(self.workers_dir)!r}: {exc.strerror}") \
                    from None
            before = self._file_config
            ignored = [name for name in ("supervisor", *sorted(config.sections))
                       if (config.supervisor if name == "supervisor" else config.sections[name])
                       != (before.supervisor if name == "supervisor" else before.sections.get(name))]
            self._file_config = config
            done = await self.pool.reload(specs, config.restart)
            self.config = attrs.evolve(self.config, workers=config.workers, restart=config.restart)
            log.info("reloaded from %s: added %s; removed %s; restarted %s; %d unchanged", source,
                     ", ".join(done["added"]) or "none", ", ".join(done["removed"]) or "none",
                     ", ".join(done["restarted"]) or "none", len(done["unchanged"]))
            if ignored:
                log.warning("reload: changes to [%s] take effect at the next start", "], [".join(ignored))
            return done

    async def _reload_builtin(self, _data: object) -> dict[str, list[str]]:
        try:
            return await self.reload()
        except ConfigError as exc:
            raise InvocationError(f"reload refused, nothing changed: {exc.message}", code="config_error") from None
