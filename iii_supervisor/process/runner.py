"""Run one worker process: spawn it in its own process group, relay its output, stop it.

- Each worker is a session leader (``start_new_session``), so its pid is its process-group id
  and a signal to ``-pid`` reaches every process it forked (unless one escaped with ``setsid``).
- stdout/stderr are pipes read line by line; each line is re-emitted as ``name[pid] line`` on
  the supervisor's own stdout/stderr (journald-friendly), through :class:`~iii_supervisor.output.Output`,
  so a stalled reader of the supervisor's output cannot freeze it. A last line without a newline is
  flushed at EOF; an over-long line is cut into pieces instead of growing a buffer.
- Stopping is SIGTERM to the group, ``grace`` seconds, then SIGKILL to the group, while the
  output is still relayed; leftovers of a worker whose main process already exited are killed
  too, so no orphan outlives its worker. The exit is watched with a pidfd, which does not reap:
  the group is signalled only while its id cannot have been reused.
- No ``PR_SET_PDEATHSIG``: trio forks from a thread of its thread cache, and the kernel sends
  the parent-death signal when that *thread* exits (after 10 s idle), which killed every worker
  10 s after its start. A worker learns of a dead supervisor from its socket instead (the SDK
  exits on EOF), and the watchdog of :mod:`.reaper` kills every worker's group when the
  supervisor is gone; under systemd, ``KillMode=`` covers the whole control group.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import trio

from ..errors import ConfigError
from ..output import Output
from ..worker_lines import WorkerLines, untag

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024


@attrs.frozen
class WorkerSpec:
    """A worker program (found in the workers directory, or declared in ``[workers.NAME]``) and
    how to supervise it (see :mod:`.settings` for the per-worker keys)."""

    name: str
    path: Path
    command: tuple[str, ...]
    cwd: Path
    #: variables added to the worker's environment (over the supervisor's, under the III_* ones)
    env: Mapping[str, str] = attrs.field(factory=dict, kw_only=True)
    #: "always" | "on-failure" | "never"
    restart: str = attrs.field(default="always", kw_only=True)
    #: seconds between SIGTERM and SIGKILL (None: the supervisor's ``grace_period``)
    grace_period: float | None = attrs.field(default=None, kw_only=True)
    #: False: not started with the supervisor (``iii-supervisor start NAME`` starts it)
    enabled: bool = attrs.field(default=True, kw_only=True)
    #: seconds to connect and finish registering (None: the supervisor's ``start_timeout``; 0: none)
    start_timeout: float | None = attrs.field(default=None, kw_only=True)
    #: bytes; restarted gracefully when its RSS stays above it (None: no limit)
    max_rss: int | None = attrs.field(default=None, kw_only=True)
    #: processes of this program (``NAME:0`` … when more than one); calls are spread over them
    instances: int = attrs.field(default=1, kw_only=True)


def discover_workers(directory: Path, *, python: str = sys.executable) -> list[WorkerSpec]:
    """Every ``*.py`` file and every subdirectory holding a ``__main__.py``.

    Names starting with ``_`` or ``.`` are skipped (helpers, ``__pycache__``). The worker's name
    is the file stem or the directory name; each runs with ``directory`` as its working directory.
    """
    directory = directory.absolute()
    specs: list[WorkerSpec] = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            specs.append(WorkerSpec(entry.stem, entry, (python, str(entry)), directory))
        elif entry.is_dir() and (entry / "__main__.py").is_file():
            specs.append(WorkerSpec(entry.name, entry, (python, str(entry)), directory))
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"two worker programs named {spec.name!r}: {str(seen[spec.name])!r} and "
                              f"{str(spec.path)!r}; rename one")
        seen[spec.name] = spec.path
    return specs


def line_relay(output: Output, name: str, pid: int, *, err: bool,
               lines: WorkerLines | None = None) -> Callable[[bytes], None]:
    """Where one worker stream's lines go: ``name[pid] line`` on the supervisor's own stream, and
    to ``lines`` (the log module), without the SDK's context tag (see worker_lines.py)."""
    prefix = f"{name}[{pid}] ".encode()

    def relay(line: bytes) -> None:
        line, context = untag(line)
        output.write_line(prefix + line, err=err)
        if lines is not None:
            lines.line(name, pid, line, err, context)

    return relay


async def pump_lines(stream: trio.abc.ReceiveStream, emit: Callable[[bytes], None], *,
                     max_line: int = MAX_LINE) -> None:
    """Read ``stream`` to EOF, calling ``emit`` once per line (without the newline)."""
    buf = bytearray()
    async with stream:
        while data := await stream.receive_some(65536):
            buf += data
            start = 0
            while (nl := buf.find(b"\n", start)) >= 0:
                emit(bytes(buf[start:nl]).rstrip(b"\r"))
                start = nl + 1
            del buf[:start]
            while len(buf) >= max_line:
                emit(bytes(buf[:max_line]))
                del buf[:max_line]
    if buf:
        emit(bytes(buf))


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if nothing is left in it."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@attrs.define(eq=False)
class WorkerProcess:
    """A running worker program, as :func:`run_worker_process` reports it."""

    proc: trio.Process
    #: set when the process has exited; it is reaped (its pid freed) only after its process
    #: group's leftovers were killed, when :func:`run_worker_process` returns
    exited: trio.Event = attrs.Factory(trio.Event)

    @property
    def pid(self) -> int:
        return self.proc.pid


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux ≥ 5.3
        return None


async def run_worker_process(
    spec: WorkerSpec,
    env: Mapping[str, str],
    output: Output,
    *,
    grace: float,
    stop: trio.Event,
    lines: WorkerLines | None = None,
    task_status: trio.TaskStatus[WorkerProcess] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Spawn ``spec``, relay its output, and return its exit code (``-N`` for signal N).

    Setting ``stop`` stops the worker gracefully (SIGTERM, ``grace`` seconds, SIGKILL) while its
    output is still relayed, so nothing it prints while shutting down is lost. Cancelling this
    task stops it too (shielded), so the process has always exited when this returns.

    The exit is noticed with a pidfd, which does not reap the process: until the reap at the end,
    its pid, and so its process-group id, cannot belong to anyone else, so signalling the group
    (leftover children included) can never hit an unrelated process.
    """
    proc = await trio.lowlevel.open_process(
        list(spec.command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=spec.cwd,
        env=dict(env),
        start_new_session=True,
    )
    pid = proc.pid
    pidfd = _open_pidfd(pid)  # at once: nothing has reaped it yet
    worker = WorkerProcess(proc)
    task_status.started(worker)

    async def watch_exit() -> None:
        if pidfd is not None:
            await trio.lowlevel.wait_readable(pidfd)  # exited, not reaped
        else:
            await proc.wait()  # (no pidfd: this reaps, and the group kill below races pid reuse)
        worker.exited.set()

    stopper = trio.CancelScope()

    async def stop_when_asked() -> None:
        with stopper:
            await stop.wait()
            await terminate(pid, worker.exited, grace=grace)

    try:
        async with trio.open_nursery() as nursery:
            assert proc.stdout is not None and proc.stderr is not None
            nursery.start_soon(pump_lines, proc.stdout, line_relay(output, spec.name, pid, err=False, lines=lines))
            nursery.start_soon(pump_lines, proc.stderr, line_relay(output, spec.name, pid, err=True, lines=lines))
            nursery.start_soon(watch_exit)
            nursery.start_soon(stop_when_asked)
            await worker.exited.wait()
            stopper.cancel()
            # Leftover children of a dead worker are orphans: kill them, then give the pipes a
            # moment to deliver the last lines (an escapee holding them open cannot stall us).
            signal_group(pid, signal.SIGKILL)
            nursery.cancel_scope.deadline = trio.current_time() + 1.0
    finally:
        with trio.CancelScope(shield=True):
            if not worker.exited.is_set():  # cancelled while it runs: stop it first
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_exit)
                    await terminate(pid, worker.exited, grace=grace)
                signal_group(pid, signal.SIGKILL)
            await proc.wait()  # the reap: from here on the pid may be reused
            if pidfd is not None:
                os.close(pidfd)
    assert proc.returncode is not None
    return proc.returncode


async def terminate(pgid: int, exited: trio.Event, *, grace: float) -> None:
    """SIGTERM the process group, wait up to ``grace`` s for ``exited``, then SIGKILL the group
    and wait for it. Signals only while the process is not reaped (``exited`` comes first)."""
    if exited.is_set():
        return
    signal_group(pgid, signal.SIGTERM)
    signal_group(pgid, signal.SIGCONT)  # a stopped (SIGSTOP) worker acts on SIGTERM only once continued
    with trio.move_on_after(grace):
        await exited.wait()
    if not exited.is_set():
        log.warning("worker pid %d ignored SIGTERM for %.1fs; sending SIGKILL", pgid, grace)
        signal_group(pgid, signal.SIGKILL)
        await exited.wait()
