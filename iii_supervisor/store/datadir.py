"""The data directory: where it is, its creation (0700), and one supervisor per directory.

Resolution order: ``--data-dir`` flag, ``[supervisor] data_dir`` in the config file,
``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``), ``$XDG_STATE_HOME/iii-supervisor``,
``~/.local/state/iii-supervisor``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import DataDirError, DataDirLocked
from ..pidlock import PidLock

LOCK_FILE = "store.lock"


def default_data_dir() -> Path:
    if systemd_dir := os.environ.get("STATE_DIRECTORY"):
        return Path(systemd_dir.split(":")[0])  # several StateDirectory= entries are ':'-separated
    if xdg := os.environ.get("XDG_STATE_HOME"):
        return Path(xdg) / "iii-supervisor"
    return Path.home() / ".local" / "state" / "iii-supervisor"


def resolve_data_dir(flag: Path | str | None = None, configured: str | None = None) -> Path:
    """The data directory to use: the flag, else the config value, else :func:`default_data_dir`."""
    if flag is not None:
        return Path(flag)
    if configured:
        return Path(configured)
    return default_data_dir()


def prepare_data_dir(path: Path) -> Path:
    """Create ``path`` (0700) if needed; check it is a directory we own and can write."""
    path = path.absolute()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise DataDirError(f"cannot create data directory {str(path)!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataDirError(f"data directory {str(path)!r} is not a directory")
    if st.st_uid != os.getuid():
        raise DataDirError(f"data directory {str(path)!r} is owned by uid {st.st_uid}, not by us ({os.getuid()})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"data directory {str(path)!r} is not writable")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


class DataDirLock(PidLock):
    """An exclusive ``flock`` on ``store.lock`` in the data directory, holding the owner's pid.

    The runtime directory has its own lock; this one stops two supervisors with different
    runtime directories from sharing one database.
    """

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / LOCK_FILE
        super().__init__(
            path,
            cannot_open=lambda why: DataDirError(f"cannot open lock file {str(path)!r}: {why}"),
            held_by=lambda pid: DataDirLocked(
                f"data directory {str(data_dir)!r} is in use by another iii-supervisor (pid {pid}); "
                f"stop it or pass a different --data-dir"))


