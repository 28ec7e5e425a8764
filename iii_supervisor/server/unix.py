"""Unix-domain sockets: a private runtime directory, a lock, listeners and peer credentials.

- The runtime directory is created 0700 and must be a real directory (not a symlink) owned by
  us; sockets are bound under umask 0177, so they are born 0600 (``chmod`` after ``bind`` would
  leave a window).
- One supervisor per runtime directory: an ``flock`` on ``supervisor.lock`` is taken before any
  socket is touched. A socket file left by a dead supervisor is then known to be stale and is
  replaced; a live one means the lock holder is running, and we refuse with its pid.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from pathlib import Path

import trio

from ..errors import AuthError, RuntimeDirError
from ..pidlock import PidLock

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
    """Create ``path`` (0700) if needed and check it is ours and private, as ssh-agent and
    systemd do: refuse a symlink (a local user could pre-create the ``/tmp`` fallback name as a
    link to redirect our sockets, and have us chmod the target) and a directory owned by another
    uid. The check and the mode fix work on one descriptor opened with ``O_NOFOLLOW``, so what is
    chmodded is what was checked. Parent directories are created as needed (default mode)."""
    path = path.absolute()
    shown = str(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)  # never follows a symlink at path: EEXIST instead
        except FileExistsError:
            pass
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise RuntimeDirError(f"runtime directory {shown!r} is a symbolic link; refusing to follow it "
                                  f"(remove it, or pass another --runtime-dir)")
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except RuntimeDirError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symlink since the lstat
            raise RuntimeDirError(f"runtime directory {shown!r} is a symbolic link; refusing to follow it") from None
        if exc.errno == errno.ENOTDIR:
            raise RuntimeDirError(f"runtime directory {shown!r} is not a directory") from None
        raise RuntimeDirError(f"cannot create runtime directory {shown!r}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise RuntimeDirError(f"runtime directory {shown!r} is owned by uid {st.st_uid}, not by us "
                                  f"({os.getuid()}); refusing to use it")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)  # ours (checked on this very descriptor)
    finally:
        os.close(fd)
    return path


class RuntimeLock(PidLock):
    """Exclusive ownership of a runtime directory for the life of one supervisor."""

    def __init__(self, runtime_dir: Path) -> None:
        path = runtime_dir / "supervisor.lock"
        super().__init__(
            path,
            cannot_open=lambda why: RuntimeDirError(f"cannot open lock file {str(path)!r}: {why}"),
            held_by=lambda pid: RuntimeDirError(
                f"another iii-supervisor (pid {pid}) is already running on runtime directory "
                f"{str(runtime_dir)!r}; stop it or pass a different --runtime-dir"))


def bind_unix_socket(path: Path, *, backlog: int = 128) -> socket.socket:
    """Bind a listening AF_UNIX socket at ``path`` (mode 0600), replacing a stale file.

    Call only while holding the :class:`RuntimeLock`: any existing file is then stale.
    """
    raw = os.fsencode(path)
    if len(raw) > MAX_SOCKET_PATH:
        raise RuntimeDirError(
            f"socket path {str(path)!r} is {len(raw)} bytes; AF_UNIX allows {MAX_SOCKET_PATH}: "
            "use a shorter --runtime-dir"
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
