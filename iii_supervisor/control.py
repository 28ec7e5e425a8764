"""A blocking client of the control socket, for the CLI (no trio needed to ask a question).

It speaks the same frames and messages as workers do: a call is an ``invokefunction`` and the
answer an ``invocationresult``, driven through the sans-IO :class:`~.protocol.Connection`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from .errors import ConnectionLost, EngineError, RuntimeDirError, error_from_wire
from .protocol import Connection, Error, InvocationResult, InvokeFunction


class ControlClient:
    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.path = path
        self._conn = Connection()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            self._sock.close()
            raise RuntimeDirError(
                f"no iii-supervisor is running with control socket {str(path)!r} "
                "(start one with 'iii-supervisor start DIR', or pass the same --runtime-dir)"
            ) from None
        except PermissionError:
            self._sock.close()
            raise RuntimeDirError(f"permission denied on control socket {str(path)!r}") from None
        self._ids = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, function_id: str, data: Any = None, *, timeout_ms: int | None = None) -> Any:
        """Call ``function_id``; returns its result or raises the matching :class:`EngineError`."""
        self._ids += 1
        inv_id = str(self._ids)
        msg = InvokeFunction(function_id=function_id, data=data, invocation_id=inv_id, timeout_ms=timeout_ms)
        self._sock.sendall(self._conn.send(msg))
        while True:
            for event in self._conn.events():
                if isinstance(event, InvocationResult) and event.invocation_id == inv_id:
                    if event.error is not None:
                        raise error_from_wire(event.error.code, event.error.message, event.error.stacktrace)
                    return event.result
                if isinstance(event, Error):
                    raise error_from_wire(event.error.code, event.error.message)
            try:
                data_in = self._sock.recv(65536)
            except TimeoutError:
                raise EngineError("no answer from the supervisor in time", code="control_timeout") from None
            if not data_in:
                raise ConnectionLost("the supervisor closed the control connection")
            self._conn.receive_data(data_in)
