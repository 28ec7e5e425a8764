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

import attrs
import orjson

from .clitools import add_common, control_client, fmt_bytes, fmt_uptime, print_json, table
from .config import Config, check_config, load_config
from .engine import MODULES, Engine
from .errors import ConfigError, EngineError, RuntimeDirError
from .modules.base import ModuleSpec, StartFlag
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iii-supervisor", description="Run and control iii workers.")
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="start the supervisor and every worker in DIR; or start worker NAME "
                                         "of a running supervisor (when NAME is not a directory)")
    start.add_argument("workers_dir", type=Path, metavar="DIR|NAME",
                       help="directory of worker programs, or a worker's name")
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    start.add_argument("--data-dir", type=Path,
                       help="directory of the embedded store (default: $STATE_DIRECTORY, else "
                            "$XDG_STATE_HOME/iii-supervisor, else ~/.local/state/iii-supervisor)")
    for module in MODULES:
        for flag in module.flags:
            start.add_argument(flag.flag, type=flag.type, help=flag.help, dest=_flag_dest(module, flag),
                               metavar=flag.key.upper())
    add_common(start)

    status = sub.add_parser("status", help="show the workers of a running supervisor")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common(status)

    invoke = sub.add_parser("invoke", help="call a function and print its result as JSON")
    invoke.add_argument("function_id")
    invoke.add_argument("payload", nargs="?", default="null", help="JSON payload (default: null; '-' reads stdin)")
    invoke.add_argument("--timeout-ms", type=int, help="call deadline in milliseconds (default: the engine's)")
    add_common(invoke)

    restart = sub.add_parser("restart", help="restart a worker by name (a stopped or FATAL one starts)")
    restart.add_argument("name")
    add_common(restart)

    stop = sub.add_parser("stop", help="stop a worker by name and keep it stopped (until start/restart)")
    stop.add_argument("name")
    add_common(stop)

    reload = sub.add_parser("reload", help="re-read the config and rescan the workers directory (as SIGHUP)")
    reload.add_argument("--json", action="store_true", help="print what changed as JSON")
    add_common(reload)

    for name, help_text in (("functions", "list registered functions"), ("triggers", "list registered triggers")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true")
        add_common(p)
    for module in MODULES:
        if module.add_commands is not None:
            module.add_commands(sub)
    return parser


def _flag_dest(module: ModuleSpec, flag: StartFlag) -> str:
    return f"module:{module.section}:{flag.key}"


def _apply_flags(args: argparse.Namespace, config: Config) -> Config:
    """``start`` flags override keys of their module's section (validated like the file)."""
    for module in MODULES:
        overrides = {flag.key: value for flag in module.flags
                     if (value := getattr(args, _flag_dest(module, flag), None)) is not None}
        if overrides:
            section = config.section(module.section)
            try:
                config = config.with_section(module.section, attrs.evolve(section, **overrides))
            except ValueError as exc:
                flags = "/".join(f.flag for f in module.flags if f.key in overrides)
                raise ConfigError(f"invalid {flags}: {exc}") from None
    problem = check_config(config)
    if problem is not None:
        raise ConfigError(f"invalid command-line options: {problem}")
    return config


def cmd_start(args: argparse.Namespace, config: Config) -> int:
    import trio

    name = str(args.workers_dir)
    if not args.workers_dir.is_dir() and "/" not in name and name not in (".", ".."):
        return _worker_command(args, config, "start", name)
    setup_logging(args.log_level or config.supervisor.log_level)
    config = _apply_flags(args, config)
    if not args.workers_dir.is_dir():
        raise ConfigError(f"workers directory {str(args.workers_dir)!r} does not exist or is not a directory")
    engine = Engine(config, args.workers_dir, runtime_dir=args.runtime_dir, data_dir=args.data_dir,
                    config_path=args.config)
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
    with control_client(args, config) as client:
        workers = client.call("engine::workers::list")["workers"]
    if args.json:
        print_json(workers)
        return 0
    rows = [[w["name"], str(w["pid"] or "-"), w["state"], "-" if w["restarts"] is None else str(w["restarts"]),
             fmt_uptime(w["uptime_s"]),
             str(len(w["functions"])), fmt_bytes(w["rss_bytes"]),
             "-" if w.get("cpu_percent") is None else f"{w['cpu_percent']:.1f}", str(w.get("in_flight", 0)),
             _last_exit(w.get("last_exit"))] for w in workers]
    print(table(["NAME", "PID", "STATE", "RESTARTS", "UPTIME", "FUNCTIONS", "RSS", "CPU%", "IN-FLIGHT", "LAST-EXIT"],
                rows))
    return 0


def _last_exit(code: int | None) -> str:
    if code is None:
        return "-"
    if code < 0:
        import signal

        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def cmd_invoke(args: argparse.Namespace, config: Config) -> int:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        print(f"iii-supervisor: payload is not valid JSON ({exc}): {text[:200]!r}", file=sys.stderr)
        return 2
    timeout = (args.timeout_ms or config.supervisor.invocation_timeout_ms) / 1000 + 10
    with control_client(args, config, timeout=timeout) as client:
        result = client.call(args.function_id, payload, timeout_ms=args.timeout_ms)
    print_json(result)
    return 0


def _worker_command(args: argparse.Namespace, config: Config, verb: str, name: str) -> int:
    with control_client(args, config) as client:
        client.call(f"engine::workers::{verb}", {"name": name})
    print(f"{'stopping' if verb == 'stop' else verb + 'ing'} {name}")
    return 0


def cmd_restart(args: argparse.Namespace, config: Config) -> int:
    return _worker_command(args, config, "restart", args.name)


def cmd_stop(args: argparse.Namespace, config: Config) -> int:
    return _worker_command(args, config, "stop", args.name)


def cmd_reload(args: argparse.Namespace, config: Config) -> int:
    with control_client(args, config) as client:
        done = client.call("engine::reload")
    if args.json:
        print_json(done)
    else:
        for what in ("added", "removed", "restarted"):
            print(f"{what}: {', '.join(done[what]) or '-'}")
        print(f"unchanged: {len(done['unchanged'])}")
    return 0


def cmd_functions(args: argparse.Namespace, config: Config) -> int:
    with control_client(args, config) as client:
        functions = client.call("engine::functions::list")["functions"]
    if args.json:
        print_json(functions)
    else:
        print(table(["FUNCTION", "WORKER", "DESCRIPTION"],
                     [[f["function_id"], f["worker_name"], f.get("description") or ""] for f in functions]))
    return 0


def cmd_triggers(args: argparse.Namespace, config: Config) -> int:
    with control_client(args, config) as client:
        triggers = client.call("engine::triggers::list")["triggers"]
    if args.json:
        print_json(triggers)
    else:
        print(table(["ID", "TYPE", "FUNCTION", "WORKER", "CONFIG"],
                     [[t["id"], t["trigger_type"], t["function_id"], t["worker_name"],
                       orjson.dumps(t["config"]).decode()] for t in triggers]))
    return 0


COMMANDS = {"start": cmd_start, "status": cmd_status, "invoke": cmd_invoke, "restart": cmd_restart, "stop": cmd_stop,
            "reload": cmd_reload,
            "functions": cmd_functions, "triggers": cmd_triggers}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        handler = COMMANDS.get(args.command) or args.func  # a module's subcommand sets func
        return int(handler(args, config))
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
