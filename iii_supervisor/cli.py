"""``iii-supervisor start | status | invoke | restart | functions | triggers``.

Exit codes: 0 success; 1 a call failed (its code and message on stderr); 2 bad usage;
78 (EX_CONFIG) bad configuration, so that systemd's ``RestartPreventExitStatus=78`` stops a
restart loop on a config error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import attrs
import orjson

from .config import Config, load_config
from .control import ControlClient
from .engine import CONTROL_SOCKET, Engine, resolve_runtime_dir
from .errors import ConfigError, EngineError, RuntimeDirError
from .output import default_output

EX_CONFIG = 78


def _journal_stderr() -> bool:
    """True when stderr is connected to journald (then levels go as ``<N>`` prefixes)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class _JournalFormatter(logging.Formatter):
    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self._PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


class _OutputHandler(logging.Handler):
    """Log records to stderr through the supervisor's :class:`Output` (never blocks the loop)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            default_output().write_line(self.format(record).encode("utf-8", "replace"), err=True)
        except Exception:
            self.handleError(record)


def setup_logging(level: str) -> None:
    handler = _OutputHandler()
    if _journal_stderr():
        handler.setFormatter(_JournalFormatter("iii-supervisor: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s iii-supervisor %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime-dir", type=Path, help="directory for the sockets (default: a private per-user dir)")
    parser.add_argument("--config", type=Path, help="TOML config file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iii-supervisor", description="Run and control iii workers.")
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="start the supervisor and every worker in DIR")
    start.add_argument("workers_dir", type=Path, metavar="DIR", help="directory of worker programs")
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    start.add_argument("--http-host", help="address of the HTTP front (default 127.0.0.1)")
    start.add_argument("--http-port", type=int, help="port of the HTTP front (default 3111; 0 picks a free one)")
    _common(start)

    status = sub.add_parser("status", help="show the workers of a running supervisor")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(status)

    invoke = sub.add_parser("invoke", help="call a function and print its result as JSON")
    invoke.add_argument("function_id")
    invoke.add_argument("payload", nargs="?", default="null", help="JSON payload (default: null; '-' reads stdin)")
    invoke.add_argument("--timeout-ms", type=int, help="call deadline in milliseconds (default: the engine's)")
    _common(invoke)

    restart = sub.add_parser("restart", help="restart a worker by name")
    restart.add_argument("name")
    _common(restart)

    for name, help_text in (("functions", "list registered functions"), ("triggers", "list registered triggers")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true")
        _common(p)
    return parser


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _fmt_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _client(args: argparse.Namespace, config: Config, timeout: float = 60.0) -> ControlClient:
    return ControlClient(resolve_runtime_dir(config, args.runtime_dir) / CONTROL_SOCKET, timeout=timeout)


def cmd_start(args: argparse.Namespace, config: Config) -> int:
    import trio

    setup_logging(args.log_level or config.supervisor.log_level)
    overrides = {k: v for k, v in (("host", args.http_host), ("port", args.http_port)) if v is not None}
    if overrides:
        try:
            config = attrs.evolve(config, http=attrs.evolve(config.http, **overrides))
        except ValueError as exc:
            raise ConfigError(f"invalid --http-port/--http-host: {exc}") from None
    if not args.workers_dir.is_dir():
        raise ConfigError(f"workers directory {str(args.workers_dir)!r} does not exist or is not a directory")
    engine = Engine(config, args.workers_dir, runtime_dir=args.runtime_dir)
    try:
        trio.run(engine.run)
    except BaseExceptionGroup as group:
        # a startup failure inside the engine's nursery (port in use, socket path …): report
        # it like any other EngineError instead of a traceback
        errors = group.exceptions
        if len(errors) == 1 and isinstance(errors[0], EngineError):
            raise errors[0] from None
        raise
    return 0


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    with _client(args, config) as client:
        workers = client.call("engine::workers::list")["workers"]
    if args.json:
        _print_json(workers)
        return 0
    rows = [[w["name"], str(w["pid"] or "-"), w["state"], str(w["restarts"]), _fmt_uptime(w["uptime_s"]),
             str(len(w["functions"])), _fmt_bytes(w["rss_bytes"])] for w in workers]
    print(_table(["NAME", "PID", "STATE", "RESTARTS", "UPTIME", "FUNCTIONS", "RSS"], rows))
    return 0


def cmd_invoke(args: argparse.Namespace, config: Config) -> int:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        print(f"iii-supervisor: payload is not valid JSON ({exc}): {text[:200]!r}", file=sys.stderr)
        return 2
    timeout = (args.timeout_ms or config.supervisor.invocation_timeout_ms) / 1000 + 10
    with _client(args, config, timeout=timeout) as client:
        result = client.call(args.function_id, payload, timeout_ms=args.timeout_ms)
    _print_json(result)
    return 0


def cmd_restart(args: argparse.Namespace, config: Config) -> int:
    with _client(args, config) as client:
        client.call("engine::workers::restart", {"name": args.name})
    print(f"restarting {args.name}")
    return 0


def cmd_functions(args: argparse.Namespace, config: Config) -> int:
    with _client(args, config) as client:
        functions = client.call("engine::functions::list")["functions"]
    if args.json:
        _print_json(functions)
    else:
        print(_table(["FUNCTION", "WORKER", "DESCRIPTION"],
                     [[f["function_id"], f["worker_name"], f.get("description") or ""] for f in functions]))
    return 0


def cmd_triggers(args: argparse.Namespace, config: Config) -> int:
    with _client(args, config) as client:
        triggers = client.call("engine::triggers::list")["triggers"]
    if args.json:
        _print_json(triggers)
    else:
        print(_table(["ID", "TYPE", "FUNCTION", "WORKER", "CONFIG"],
                     [[t["id"], t["trigger_type"], t["function_id"], t["worker_name"],
                       orjson.dumps(t["config"]).decode()] for t in triggers]))
    return 0


COMMANDS = {"start": cmd_start, "status": cmd_status, "invoke": cmd_invoke, "restart": cmd_restart,
            "functions": cmd_functions, "triggers": cmd_triggers}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        return COMMANDS[args.command](args, config)
    except ConfigError as exc:
        print(f"iii-supervisor: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    except RuntimeDirError as exc:
        print(f"iii-supervisor: {exc.message}", file=sys.stderr)
        return 1
    except EngineError as exc:
        print(f"iii-supervisor: {exc.code}: {exc.message}", file=sys.stderr)
        if exc.stacktrace and os.environ.get("III_DEBUG"):
            print(exc.stacktrace, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
