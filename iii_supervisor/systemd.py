"""systemd integration: ``sd_notify`` readiness and watchdog pings (no-ops outside systemd)."""

from __future__ import annotations

import os
import socket

import trio


def sd_notify(*lines: str) -> bool:
    """Send ``lines`` to ``$NOTIFY_SOCKET``; False when not running under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall("\n".join(lines).encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of ``WatchdogSec`` if systemd asked this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


async def run_watchdog(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ping the systemd watchdog from the trio loop: a stalled loop stops the pings."""
    interval = watchdog_interval()
    task_status.started()
    if interval is None:
        return
    while True:
        sd_notify("WATCHDOG=1")
        await trio.sleep(interval)
