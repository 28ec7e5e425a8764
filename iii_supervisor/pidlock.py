"""An exclusive ``flock`` on a file that holds the owner's pid: one supervisor per directory.

Used for the runtime directory (``supervisor.lock``) and the data directory (``store.lock``).
The file is opened without following a symlink (a symlink in our private directory is not ours
to follow); the lock goes with the descriptor, so a supervisor killed with ``kill -9`` leaves a
file that the next one simply locks again.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from .errors import EngineError


class PidLock:
    def __init__(self, path: Path, *, cannot_open: Callable[[str], EngineError],
                 held_by: Callable[[str], EngineError]) -> None:
        self.path = path
        #: the error when the file cannot be opened (given the reason) / is locked (given the holder's pid)
        self._cannot_open = cannot_open
        self._held_by = held_by
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise self._cannot_open(exc.strerror or str(exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise self._held_by(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
