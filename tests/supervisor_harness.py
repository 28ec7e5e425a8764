"""Run a real ``iii-supervisor start`` process for end-to-end tests, and talk to it.

Everything is bounded: every wait has a deadline, and the supervisor (with its workers) is
killed in ``aclose`` whatever happened in the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import trio

from iii_supervisor.errors import error_from_wire
from iii_supervisor.protocol import Error, InvocationResult, InvokeFunction
from iii_supervisor.transport import FramedStream

PREAMBLE = "from iii_supervisor import register_worker, TriggerAction\niii = register_worker()\n"


def write_worker(directory: Path, name: str, body: str, *, preamble: bool = True) -> Path:
    path = directory / f"{name}.py"
    path.write_text((PREAMBLE if preamble else "") + textwrap.dedent(body))
    return path


def json_lines(path: Path) -> list[Any]:
    """The complete JSON lines a worker has appended to ``path`` so far.

    A worker may be half-way through a write while the test reads, so an unterminated last line
    is left for the next read instead of failing to parse.
    """
    if not path.exists():
        return []
    *complete, _partial = path.read_bytes().split(b"\n")
    return [orjson.loads(line) for line in complete if line.strip()]


class Supervisor:
    """A supervisor subprocess with its own short runtime dir (AF_UNIX paths are ≤ 107 bytes)."""

    def __init__(self, workers_dir: Path, *extra_args: str, env: dict[str, str] | None = None,
                 pipe_output: bool = False, data_dir: Path | None = None) -> None:
        self.workers_dir = workers_dir
        self.env = env
        #: stdout and stderr to a pipe that only :meth:`read_pipe` reads (not to the log file)
        self.pipe_output = pipe_output
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="iii-t"))
        self.log_path = self.runtime_dir.with_suffix(".log")
        self.extra_args = extra_args
        #: the store's directory: private to this supervisor unless given (to restart on the same data)
        self.data_dir = data_dir if data_dir is not None else self.runtime_dir / "data"
        self.proc: trio.Process | None = None
        self._log = None

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / "control.sock"

    @property
    def worker_socket(self) -> Path:
        return self.runtime_dir / "iii.sock"

    def cli_args(self, *args: str) -> list[str]:
        if args[:1] == ("start",) and "--data-dir" not in args:  # never the user's own data dir
            args = (*args, "--data-dir", str(self.data_dir))
        return [sys.executable, "-m", "iii_supervisor", *args, "--runtime-dir", str(self.runtime_dir)]

    async def start(self, *, expect_workers: int | None = None, functions: tuple[str, ...] = (),
                    timeout: float = 15) -> None:
        """Start; wait for ``expect_workers`` running workers and for ``functions`` to be registered
        ("running" means connected: a worker registers its functions just after)."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in aclose
        args = self.cli_args("start", str(self.workers_dir), "--http-port", "0", "--stream-port", "0",
                             *self.extra_args)
        self.proc = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE if self.pipe_output else self._log,
                                                     stderr=subprocess.STDOUT, start_new_session=True,
                                                     env={**os.environ, **(self.env or {})})
        with trio.fail_after(timeout):
            while self.pipe_output:  # no log to watch: wait for the control socket to answer
                try:
                    await self.workers()
                    break
                except OSError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"supervisor exited with {self.proc.returncode}") from None
                    await trio.sleep(0.02)
            # the log line comes after every socket listens (the socket file exists a bit earlier)
            while not self.pipe_output and "iii-supervisor ready" not in self.output():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"supervisor exited with {self.proc.returncode}:\n{self.output()}")
                await trio.sleep(0.02)
            if expect_workers is not None:
                await self.wait_running(expect_workers)
            while not set(functions) <= await self.function_ids():
                await trio.sleep(0.02)

    def logged_port(self, listening: str) -> int:
        """The port of a listener, from its "<listening>HOST:PORT" log line."""
        for line in self.output().splitlines():
            if listening in line:
                return int(line.rsplit(":", 1)[1])
        raise RuntimeError(f"the supervisor logged no {listening!r} line")

    @property
    def http_port(self) -> int:
        return self.logged_port("HTTP front listening on http://")

    @property
    def stream_port(self) -> int:
        return self.logged_port("stream endpoint listening on ws://")

    @property
    def iii_port(self) -> int:
        """The iii door's port (``--iii-port 0`` or ``[iii] port = 0``)."""
        return self.logged_port("iii door listening on ws://")

    async def read_pipe(self, until: bytes, *, limit: int = 1 << 30) -> bytes:
        """With ``pipe_output``: read the supervisor's output until ``until`` appears."""
        assert self.proc is not None and self.proc.stdout is not None
        data = b""
        while until not in data and len(data) < limit:
            chunk = await self.proc.stdout.receive_some(1 << 16)
            if not chunk:
                break
            data += chunk
        return data

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def call(self, function_id: str, data: Any = None, *, timeout_ms: int | None = None) -> Any:
        """Call through the control socket (a fresh connection per call)."""
        async with open_control(self.control_socket) as control:
            result = await control.call_raw(function_id, data, timeout_ms=timeout_ms)
        return unwrap(result)

    async def workers(self) -> dict[str, dict[str, Any]]:
        rows = (await self.call("engine::workers::list"))["workers"]
        return {w["name"]: w for w in rows}

    async def function_ids(self) -> set[str]:
        return {f["function_id"] for f in (await self.call("engine::functions::list"))["functions"]}

    async def wait_running(self, count: int, *, restarts: int = 0) -> dict[str, dict[str, Any]]:
        """Poll until ``count`` workers are running (with at least ``restarts`` restarts in all)."""
        while True:
            workers = await self.workers()
            running = [w for w in workers.values() if w["state"] == "running"]
            if len(running) >= count and sum(w["restarts"] or 0 for w in workers.values()) >= restarts:
                return workers
            await trio.sleep(0.05)

    async def wait_for_output(self, needle: str) -> None:
        while needle not in self.output():
            await trio.sleep(0.05)

    async def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(timeout):
            return await self.proc.wait()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            if self.proc is not None and self.proc.returncode is None:
                self.proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(15):
                    await self.proc.wait()
                if self.proc.returncode is None:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    await self.proc.wait()
            if self._log is not None:
                self._log.close()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def unwrap(result: InvocationResult) -> Any:
    if result.error is not None:
        raise error_from_wire(result.error.code, result.error.message, result.error.stacktrace)
    return result.result


class AsyncControl:
    """An async client of the control socket built on the same FramedStream as workers use."""

    def __init__(self, framed: FramedStream, nursery: trio.Nursery) -> None:
        self.framed = framed
        self._nursery = nursery
        self._ids = 0
        self._waiting: dict[str, trio.MemorySendChannel[InvocationResult]] = {}

    async def call(self, function_id: str, data: Any = None, *, timeout_ms: int | None = None) -> Any:
        return unwrap(await self.call_raw(function_id, data, timeout_ms=timeout_ms))

    async def call_raw(self, function_id: str, data: Any = None, *, timeout_ms: int | None = None) -> InvocationResult:
        self._ids += 1
        inv_id = str(self._ids)
        send, receive = trio.open_memory_channel[InvocationResult](1)
        self._waiting[inv_id] = send
        await self.framed.send(InvokeFunction(function_id=function_id, data=data, invocation_id=inv_id,
                                              timeout_ms=timeout_ms))
        return await receive.receive()

    async def _reader(self) -> None:
        async for event in self.framed.events():
            if isinstance(event, InvocationResult) and event.invocation_id in self._waiting:
                self._waiting.pop(event.invocation_id).send_nowait(event)
            elif isinstance(event, Error):
                raise error_from_wire(event.error.code, event.error.message)


@asynccontextmanager
async def open_control(path: Path) -> AsyncIterator[AsyncControl]:
    stream = await trio.open_unix_socket(str(path))
    framed = FramedStream(stream)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(framed.run_writer)
            control = AsyncControl(framed, nursery)
            nursery.start_soon(control._reader)
            try:
                yield control
            finally:
                nursery.cancel_scope.cancel()  # no await here: it would swallow the body's error
    finally:
        await trio.aclose_forcefully(stream)


async def run_cli(sup: Supervisor, *args: str, stdin: bytes = b"",
                  timeout: float = 20) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout):
        return await trio.run_process(sup.cli_args(*args), stdin=stdin, capture_stdout=True, capture_stderr=True,
                                      check=False)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
