"""The supervisor's stdout and stderr, which a stalled reader must not be able to freeze.

Everything the supervisor prints goes through :class:`Output`: its own log records and every line
its workers print (relayed as ``name[pid] line``). Lines are queued in memory and written in
batches by one task, which hands each batch to a thread (``trio.to_thread``): a write to a pipe
or terminal blocks while nobody reads (a paused terminal, a pager, a stalled journald), and the
event loop that serves calls and HTTP must go on meanwhile.

While a write is blocked, lines queue up to :data:`BUFFER_LIMIT` bytes per stream; later ones
are dropped and counted, and once the output flows again a line says how many were lost. Before
:meth:`Output.run` starts and after it ends (start-up errors, the last log lines), lines are
written directly.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from typing import BinaryIO

import trio

#: Bytes queued per stream while its reader is stalled; beyond this, lines are dropped (counted).
BUFFER_LIMIT = 1024 * 1024


class _Stream:
    __slots__ = ("file", "lines", "size", "dropped")

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.lines: deque[bytes] = deque()
        self.size = 0
        self.dropped = 0

    def take(self) -> tuple[list[bytes], int]:
        lines, dropped = list(self.lines), self.dropped
        self.lines.clear()
        self.size = self.dropped = 0
        return lines, dropped


def _write(file: BinaryIO, lines: list[bytes], dropped: int) -> None:
    if dropped:
        lines.append(b"iii-supervisor: %d line(s) of output dropped while this stream was blocked\n" % dropped)
    try:
        file.write(b"".join(lines))
        file.flush()
    except (OSError, ValueError):  # our own stdout/stderr is gone: nothing sensible to do
        pass


class Output:
    def __init__(self, stdout: BinaryIO | None = None, stderr: BinaryIO | None = None, *,
                 limit: int = BUFFER_LIMIT) -> None:
        self._streams = (_Stream(stdout or sys.stdout.buffer), _Stream(stderr or sys.stderr.buffer))
        self._limit = limit
        self._lock = threading.Lock()  # lines may come from other threads (log records)
        self._token: trio.lowlevel.TrioToken | None = None
        self._wakeup = trio.Event()
        #: set when the batch being written by a thread is out (the thread may outlive a cancel)
        self._in_flight: threading.Event | None = None
        self._limiter: trio.CapacityLimiter | None = None

    def write_line(self, line: bytes, *, err: bool = False) -> None:
        """Queue ``line`` (without its newline) for stdout or stderr. Never blocks while running."""
        stream = self._streams[err]
        data = line + b"\n"
        token = self._token
        if token is None:  # not running: write directly
            with self._lock:
                _write(stream.file, [data], 0)
            return
        with self._lock:
            if stream.size + len(data) > self._limit:
                stream.dropped += 1
                return
            stream.lines.append(data)
            stream.size += len(data)
        if trio.lowlevel.in_trio_run() and trio.lowlevel.current_trio_token() is token:
            self._wakeup.set()
        else:
            try:
                token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                pass

    def _wake(self) -> None:
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what is queued until cancelled; then write the rest directly (bounded in time)."""
        self._token = trio.lowlevel.current_trio_token()
        self._limiter = trio.CapacityLimiter(1)
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                # (abandoned on cancel: a write that never returns must not hold up shutdown)
                await self._flush()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                if self._in_flight is not None:  # first the batch a cancelled write left behind
                    await trio.to_thread.run_sync(self._in_flight.wait, abandon_on_cancel=True)
                await self._flush()
            self._token = None  # from now on, lines are written directly

    async def _flush(self) -> None:
        """Write everything queued, including what is queued meanwhile."""
        while True:
            wrote = False
            for stream in self._streams:
                # Taken lines must reach a thread: a cancel may only strike before they are taken
                # (here), or after the thread started (the write is then abandoned, not lost).
                # With our own one-token limiter, to_thread has no other cancellation point.
                await trio.lowlevel.checkpoint_if_cancelled()
                with self._lock:
                    lines, dropped = stream.take()
                if not (lines or dropped):
                    continue
                wrote = True
                done = self._in_flight = threading.Event()

                def write(file: BinaryIO = stream.file, lines: list[bytes] = lines, dropped: int = dropped,
                          done: threading.Event = done) -> None:
                    try:
                        _write(file, lines, dropped)
                    finally:
                        done.set()

                await trio.to_thread.run_sync(write, abandon_on_cancel=True, limiter=self._limiter)
                self._in_flight = None
            if not wrote:
                return


_default: Output | None = None


def default_output() -> Output:
    """The process's :class:`Output` on ``sys.stdout``/``sys.stderr`` (one per process)."""
    global _default
    if _default is None:
        _default = Output()
    return _default
