"""Per-worker settings: the ``[workers.NAME]`` sections of the config file.

A section adjusts the worker program of that name found in the workers directory, or declares a
worker that is not in it (then ``command`` is required: any executable with its arguments; it
gets the same ``III_*`` environment as every worker)::

    [workers.api]
    command = ["node", "server.js", "--port", "0"]   # or a string, split like a shell would
    env = { LOG_LEVEL = "debug" }
    cwd = "/srv/api"                                  # relative: to the workers directory
    restart = "on-failure"                            # "always" (default) | "on-failure" | "never"
    grace_period = 5.0                                # default: [supervisor] grace_period
    enabled = false                                   # start it with `iii-supervisor start api`
    start_timeout = 20.0                              # default: [supervisor] start_timeout (0: none)
    max_rss = "512MiB"                                # restart it when its RSS stays above this
    instances = 4                                     # processes api:0 … api:3, calls spread over them

Pure: structuring and validation happen in :mod:`..config`; :func:`worker_specs` merges the
sections with what :func:`.runner.discover_workers` found.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import attrs

from ..errors import ConfigError
from .resources import parse_size
from .runner import WorkerSpec

RESTART_MODES = ("always", "on-failure", "never")
#: a worker's name: also used in ``NAME:i`` (instances), log prefixes and file names
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def _command(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"command {value!r} cannot be split into words: {exc}") from None
    if not isinstance(value, list | tuple) or not value or not all(isinstance(a, str) and a for a in value):
        raise ValueError(f"command must be a non-empty list of strings (the program, then its arguments) "
                         f"or a string, got {value!r}")
    return tuple(value)


def _env(_inst: Any, attribute: attrs.Attribute[dict[str, str]], value: dict[str, str]) -> None:
    for key in value:
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"{attribute.name} has an invalid variable name {key!r}")
        if key.startswith("III_"):
            raise ValueError(f"{attribute.name} may not set {key!r}: the III_* variables are the supervisor's")


def _grace(_inst: Any, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """One ``[workers.NAME]`` section."""

    command: Any = attrs.field(default=None, converter=_command)
    env: dict[str, str] = attrs.field(factory=dict, validator=_env)
    cwd: str | None = None
    restart: str = attrs.field(default="always", validator=attrs.validators.in_(RESTART_MODES))
    grace_period: float | None = attrs.field(default=None, validator=_grace)
    enabled: bool = True
    start_timeout: float | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.ge(0)))
    #: bytes (or "512MiB", "2G"): a worker whose RSS stays above it is restarted gracefully
    max_rss: Any = attrs.field(default=None, converter=parse_size)
    #: processes of this worker, each registering the same functions; calls go to the one with
    #: the fewest calls in flight
    instances: int = attrs.field(default=1, validator=[attrs.validators.ge(1), attrs.validators.le(64)])


def check_worker_names(workers: dict[str, WorkerConfig]) -> str | None:
    for name in workers:
        if not _NAME.match(name):
            return (f"workers.{name}: invalid worker name {name!r} (letters, digits, '_', '.', '-'; "
                    f"starting with a letter or digit; at most 64 characters)")
    return None


def worker_specs(discovered: list[WorkerSpec], workers: dict[str, WorkerConfig], workers_dir: Path) -> list[WorkerSpec]:
    """The programs found in the directory, adjusted by their sections, plus the workers only the
    config declares (they need a ``command``). Raises :class:`ConfigError` naming the section."""
    workers_dir = workers_dir.absolute()
    found = {spec.name: spec for spec in discovered}
    specs = []
    for name in sorted({*found, *workers}):
        spec = found.get(name)
        cfg = workers.get(name)
        if cfg is None:
            assert spec is not None
            specs.append(spec)
            continue
        if spec is None and cfg.command is None:
            raise ConfigError(f"workers.{name}: there is no worker program {name!r} in {str(workers_dir)!r} "
                              f"(a {name}.py file or a {name}/ directory with __main__.py), so 'command' is needed")
        cwd = (workers_dir / cfg.cwd) if cfg.cwd is not None else (spec.cwd if spec else workers_dir)
        if not cwd.is_dir():
            raise ConfigError(f"workers.{name}.cwd: {str(cwd)!r} is not a directory")
        command = cfg.command if cfg.command is not None else spec.command  # type: ignore[union-attr]
        path = spec.path if spec is not None else Path(command[0])
        specs.append(WorkerSpec(name, path, command, cwd, env=dict(cfg.env), restart=cfg.restart,
                                grace_period=cfg.grace_period, enabled=cfg.enabled, start_timeout=cfg.start_timeout,
                                max_rss=cfg.max_rss, instances=cfg.instances))
    return specs


#: files of a directory worker looked at for changes, at most
_MAX_FILES = 2000


def program_fingerprint(spec: WorkerSpec) -> object:
    """What changes when a worker's program is edited: size and mtime of its file, or of every
    file under its directory (``__pycache__`` and hidden entries skipped). Blocking (stat calls):
    run it in a thread. None for a command that is not a file (``node`` on the PATH)."""
    path = spec.path
    try:
        if path.is_file():
            st = path.stat()
            return (st.st_size, st.st_mtime_ns)
        if not path.is_dir():
            return None
        entries = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                    continue
                full = os.path.join(root, name)
                st = os.stat(full)
                entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
                if len(entries) >= _MAX_FILES:
                    return tuple(entries)
        return tuple(entries)
    except OSError:
        return None
