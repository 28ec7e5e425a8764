"""What CLI subcommands share (the core's and the modules'): a control client, tables, JSON.

A module's subcommand is thin: it calls a built-in function over the control socket with
:func:`control_client` and prints the result with :func:`table` or :func:`print_json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from .config import Config
from .control import ControlClient
from .server.unix import CONTROL_SOCKET, resolve_runtime_dir


def add_common(parser: argparse.ArgumentParser) -> None:
    """The options every subcommand takes."""
    parser.add_argument("--runtime-dir", type=Path, help="directory for the sockets (default: a private per-user dir)")
    parser.add_argument("--config", type=Path, help="TOML config file")


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def control_client(args: argparse.Namespace, config: Config, timeout: float = 60.0) -> ControlClient:
    path = resolve_runtime_dir(config.supervisor.runtime_dir, args.runtime_dir) / CONTROL_SOCKET
    return ControlClient(path, timeout=timeout)


