"""Unix-domain sockets: a private runtime directory, a lock, listeners and peer credentials.

- The runtime directory is created 0700 and must be owned by us; sockets are bound under umask
  0177, so they are born 0600 (``chmod`` after ``bind`` would leave a window).
- One supervisor per runtime directory: an ``flock`` on ``supervisor.lock`` is taken before any
  socket is touched. A socket file left by a dead supervisor is then known to be stale and is
  replaced; a live one means the lock holder is running, and we refuse with its pid.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import struct
from pathlib import Path

import trio

from ..errors import AuthError, RuntimeDirError

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL
_PEERCRED = struct.Struct("3i")


#: socket file names in the runtime directory
WORKER_SOCKET = "iii.sock"
CONTROL_SOCKET = "control.sock"


def resolve_runtime_dir(configured: str | None, override: Path | None = None) -> Path:
    """The ``--runtime-dir`` flag, else ``[supervisor] runtime_dir``, else the default."""
    if override is not None:
        return override
    if configured:
        return Path(configured)
    return default_runtime_dir()


def default_runtime_dir() -> Path:
    """``$RUNTIME_DIRECTORY`` (systemd), else ``$XDG_RUNTIME_DIR/iii-supervisor``, else /tmp."""
    if systemd_dir := os.environ.get("RUNTIME_DIRECTORY"):
        return Path(systemd_dir.split(":")[0])
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "iii-supervisor"
    return Path(f"/tmp/iii-supervisor-{os.getuid()}")


def prepare_runtime_dir(path: Path) -> Path:
    """Create ``path`` (0700) if needed and check it is ours and private."""
    path = path.absolute()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise RuntimeDirError(f"cannot create runtime directory {str(path)!r}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {str(path)!r} is not a directory")
    if st.st_uid != os.getuid():
        raise RuntimeDirError(f"runtime directory {str(path)!r} is owned by uid {st.st_uid}, not by us ({os.getuid()})")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


class RuntimeLock:
    """Exclusive ownership of a runtime directory for the life of one supervisor."""

    def __init__(self, runtime_dir: Path) -> None:
        self.path = runtime_dir / "supervisor.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeDirError(
                f"another iii-supervisor (pid {holder}) is already running on runtime directory "
                f"{str(self.path.parent)!r}; stop it or pass a different --runtime-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def bind_unix_socket(path: Path, *, backlog: int = 128) -> socket.socket:
    """Bind a listening AF_UNIX socket at ``path`` (mode 0600), replacing a stale file.

    Call only while holding the :class:`RuntimeLock`: any existing file is then stale.
    """
    raw = os.fsencode(path)
    if len(raw) > MAX_SOCKET_PATH:
        raise RuntimeDirError(
            f"socket path {str(path)!r} is {len(raw)} bytes; AF_UNIX allows {MAX_SOCKET_PATH}: use a shorter --runtime-dir"
        )
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
        else:
            raise RuntimeDirError(f"{str(path)!r} exists and is not a socket; refusing to replace it")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        sock.bind(raw)
    except OSError as exc:
        sock.close()
        raise RuntimeDirError(f"cannot bind {str(path)!r}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def open_unix_listener(path: Path) -> trio.SocketListener:
    return trio.SocketListener(trio.socket.from_stdlib_socket(bind_unix_socket(path)))


def peer_credentials(stream: trio.SocketStream) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, from SO_PEERCRED."""
    data = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(data)
    return pid, uid, gid


def check_peer_uid(stream: trio.SocketStream) -> int:
    """Refuse peers running as another user (root excepted); returns the peer pid."""
    pid, uid, _ = peer_credentials(stream)
    if uid != os.getuid() and uid != 0:
        raise AuthError(f"connection from pid {pid} running as uid {uid} refused: only uid {os.getuid()} may connect")
    return pid
