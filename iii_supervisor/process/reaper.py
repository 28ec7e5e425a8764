"""No orphan, ever: a small watchdog process that kills the workers if the supervisor dies.

``kill -9`` of the supervisor gives it no chance to stop its workers, and each worker is its own
session (so that signalling a worker's group reaches everything it forked). The SDK exits when its
socket closes, but a worker busy in C code, a program that does not use the SDK, or the children a
worker forked would live on. ``PR_SET_PDEATHSIG`` cannot help: trio forks from a thread of its
cache and the kernel sends that signal when the *thread* exits (after 10 s idle), and it would not
reach a worker's children anyway.

So the supervisor starts one watchdog at start-up: ``python -m iii_supervisor.process.reaper``,
with a pipe on its stdin. The supervisor writes ``+PGID`` when it spawns a worker and ``-PGID``
once it has reaped it (so a group id that might be reused is never signalled). When the pipe
reaches end of file — the supervisor exited, however it exited — the watchdog sends SIGTERM to
every group still listed, SIGKILL after :data:`KILL_AFTER` seconds to those left, and exits. After
a clean stop its list is empty and it just exits.

The watchdog ignores SIGINT, SIGTERM and SIGHUP (a Ctrl-C in a terminal reaches the supervisor's
process group, and the supervisor must stop its workers gracefully first); it uses only the
standard library and no threads. A worker child that left its session (``setsid``) is out of
its reach: under systemd, ``KillMode=`` covers the whole control group.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import trio

log = logging.getLogger(__name__)

#: seconds between the SIGTERM and the SIGKILL to groups left after the supervisor died
KILL_AFTER = 0.5


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_groups(groups: set[int], *, kill_after: float = KILL_AFTER) -> None:
    """SIGTERM every group, then SIGKILL those still there after ``kill_after`` seconds."""
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + kill_after
    while (left := {g for g in groups if _alive(g)}) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pgid in left:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> None:
    """The watchdog process: read ``+PGID``/``-PGID`` lines until EOF, then kill what is left."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    stdin = sys.stdin.buffer
    for line in stdin:
        try:
            op, pgid = line[:1], int(line[1:])
        except ValueError:
            continue
        if op == b"+" and pgid > 1:
            groups.add(pgid)
        elif op == b"-":
            groups.discard(pgid)
    if groups:
        print(f"iii-supervisor reaper: the supervisor is gone; stopping {len(groups)} worker group(s): "
              f"{' '.join(map(str, sorted(groups)))}", file=sys.stderr, flush=True)
        kill_groups(groups)


class Reaper:
    """The supervisor's side: starts the watchdog and tells it which groups to kill if we die."""

    def __init__(self) -> None:
        self._proc: trio.Process | None = None
        self._fd: int | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the watchdog; keep it until cancelled (then close its pipe: it exits at once)."""
        read_fd, write_fd = os.pipe()  # both non-inheritable: no worker holds the write end
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "iii_supervisor.process.reaper"], stdin=read_fd,
                stdout=subprocess.DEVNULL, pass_fds=())
        finally:
            os.close(read_fd)
        self._proc, self._fd = proc, write_fd
        task_status.started()
        try:
            await proc.wait()
            log.error("the reaper (pid %d) exited with %s: workers would outlive a killed supervisor",
                      proc.pid, proc.returncode)
        finally:
            self._close()
            with trio.CancelScope(shield=True):
                await proc.wait()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, line: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, line.encode())  # a few bytes into a pipe the watchdog drains: never blocks long
        except OSError as exc:
            log.error("cannot reach the reaper: %s", exc)
            self._close()

    def watch(self, pgid: int) -> None:
        self._write(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        self._write(f"-{pgid}\n")


if __name__ == "__main__":
    main()
