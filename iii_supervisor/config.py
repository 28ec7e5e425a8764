"""The configuration file (TOML), structured and validated with cattrs.

Every key has a default, so no file is needed. Unknown keys and ill-typed values are errors that
name the key path and the value (``supervisor.grace_period: expected a number, got 'ten'``).
Command-line flags override the file.
"""

from __future__ import annotations

import math
import re
import tomllib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import cattrs

from .errors import ConfigError
from .process.policy import BackoffPolicy
from .process.settings import WorkerConfig, check_worker_names
from .protocol import DEFAULT_MAX_FRAME_SIZE
from .protocol.frames import ABSOLUTE_MAX_FRAME_SIZE

if TYPE_CHECKING:
    from .modules.base import ModuleSpec


def positive(_inst: Any, attribute: attrs.Attribute, value: float) -> None:  # type: ignore[type-arg]
    if not 0 < value < math.inf:  # (NaN fails this too)
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class SupervisorConfig:
    #: Directory for the sockets and the lock (default: see ``server.unix.default_runtime_dir``).
    runtime_dir: str | None = None
    #: Seconds a worker gets between SIGTERM and SIGKILL.
    grace_period: float = attrs.field(default=10.0, validator=positive)
    #: Largest frame accepted on the worker and control sockets, in bytes.
    max_frame_size: int = attrs.field(default=DEFAULT_MAX_FRAME_SIZE, validator=positive)
    #: Bytes queued for one worker (its socket not taking them) before calls to it fail at once
    #: with ``worker_overloaded``; at least ``max_frame_size``.
    max_queued_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=positive)
    #: Default deadline of a call, in milliseconds (per call: ``timeout_ms``).
    invocation_timeout_ms: int = attrs.field(default=30_000, validator=positive)
    #: Seconds a new worker connection has to present its token.
    handshake_timeout: float = attrs.field(default=5.0, validator=positive)
    #: Seconds a spawned worker has to connect and finish registering (the SDK says so when the
    #: script's main code ends, or on ``iii.ready()``); then it is restarted. 0: no limit.
    #: Per worker: ``[workers.NAME] start_timeout``.
    start_timeout: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))
    #: Seconds between two pings of a connected worker (0: no pings) ...
    ping_interval: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    #: ... and how long its answer may take before the worker counts as hung and is restarted.
    ping_timeout: float = attrs.field(default=20.0, validator=positive)
    #: Seconds between two samples of every worker's RSS and CPU (psutil, in a thread).
    sample_interval: float = attrs.field(default=5.0, validator=positive)
    #: Log level of the supervisor's own messages.
    log_level: str = attrs.field(default="info", validator=attrs.validators.in_(["debug", "info", "warning", "error"]))
    #: Directory of the embedded store (``--data-dir``; default: see ``store.datadir.default_data_dir``).
    data_dir: str | None = None
    #: The store's durability: "full" survives power loss, "normal" survives a crash of the
    #: supervisor (see docs/store.md).
    store_synchronous: str = attrs.field(default="full", validator=attrs.validators.in_(["full", "normal"]))


@attrs.frozen(kw_only=True)
class Config:
    """The whole configuration: the supervisor's own sections, and one section per module.

    ``sections`` holds every module's section (its default when the file has none), by section
    name; read one with :meth:`section`.
    """

    supervisor: SupervisorConfig = SupervisorConfig()
    restart: BackoffPolicy = BackoffPolicy()
    #: ``[workers.NAME]`` sections, by worker name
    workers: dict[str, WorkerConfig] = attrs.field(factory=dict)
    sections: dict[str, Any] = attrs.field(factory=lambda: {m.section: m.default_config() for m in _modules()})

    def section(self, name: str) -> Any:
        try:
            return self.sections[name]
        except KeyError:
            raise KeyError(f"no config section {name!r} (sections: {', '.join(sorted(self.sections))})") from None

    def with_section(self, name: str, value: Any) -> Config:
        return attrs.evolve(self, sections={**self.sections, name: value})


#: the sections the supervisor itself owns (the others belong to modules)
_CORE_SECTIONS: dict[str, Any] = {"supervisor": SupervisorConfig, "restart": BackoffPolicy,
                                   "workers": dict[str, WorkerConfig]}


def _modules() -> tuple[ModuleSpec, ...]:
    from .engine import MODULES  # the one list of modules (imported late: the engine imports us)

    return MODULES


class _BadValue(TypeError):
    """Raised by the strict hooks below; its message (which names the value) is shown as is."""


def _format_problem(exc: BaseException, kind: type | None) -> str:
    # cattrs' default formatter drops the message ("invalid value"): keep ours, which names the
    # value, and the attrs validators' (raised from __init__), which name the field and the value.
    if isinstance(exc, _BadValue) or (isinstance(exc, ValueError) and kind is None and exc.args):
        return str(exc.args[0])  # attrs' in_() adds the attribute, options and value as more args
    return cattrs.v.format_exception(exc, kind)


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def strict_number(value: Any, kind: type) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind is int and not isinstance(value, int)):
            raise _BadValue(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        return kind(value)

    def strict_str(value: Any, _kind: type) -> str:
        if not isinstance(value, str):
            raise _BadValue(f"expected a string, got {value!r}")
        return value

    def strict_bool(value: Any, _kind: type) -> bool:
        if not isinstance(value, bool):
            raise _BadValue(f"expected true or false, got {value!r}")
        return value

    conv.register_structure_hook(bool, strict_bool)
    conv.register_structure_hook(int, strict_number)
    conv.register_structure_hook(float, strict_number)
    conv.register_structure_hook(str, strict_str)
    return conv


_CONVERTER = _converter()


def register_structure_hook(kind: Any, hook: Any) -> None:
    """Let a module structure its section its own way (e.g. ``[queues]`` mixes options and tables);
    ``hook(value, kind)`` raises :class:`ConfigError` naming the key path."""
    _CONVERTER.register_structure_hook(kind, hook)


def require_list(kind: Any, expected: str, *, of_tables: bool = False) -> None:
    """Refuse anything but a list (of tables, with ``of_tables``) for the sequence type ``kind``,
    saying ``expected``: a string is iterable, and cattrs would read it as a list of letters."""
    default = _CONVERTER.get_structure_hook(kind)

    def hook(value: Any, actual: Any) -> Any:
        if not isinstance(value, list):
            raise _BadValue(f"expected {expected}, got {value!r:.200}")
        for i, item in enumerate(value):
            if of_tables and not isinstance(item, dict):
                raise _BadValue(f"expected {expected}, got {item!r:.200} as entry {i}")
        return default(value, actual)

    _CONVERTER.register_structure_hook_func(lambda t: t == kind, hook)


_FIELD_AT_START = re.compile(r"'?([a-z_]+)'?(?= |$)")


def _name_key(problem: str, kind: Any) -> str:
    """``"factor must be at least 1, got 0.5 @ restart"`` → ``"restart.factor must be …"``.

    A validator of a section (attrs, run in ``__init__``) is reported at the section's path;
    its message starts with the field's name, which then joins the path, so that every problem
    names its full key (``restart.factor``) the way ill-typed values do."""
    message, sep, path = problem.rpartition(" @ ")
    if not sep:
        return problem
    path = re.sub(r"\['([^']*)'\]", r".\1", path)  # cattrs writes dict keys as workers['api']
    match = _FIELD_AT_START.match(message)
    depth = 0
    if typing.get_origin(kind) is dict:  # [workers.NAME]: the class of the values, one level down
        kind, depth = typing.get_args(kind)[1], 1
    if match and path.count(".") == depth and isinstance(kind, type) and attrs.has(kind) \
            and match.group(1) in attrs.fields_dict(kind):
        return f"{path}.{match.group(1)}{message[match.end():]}"
    return f"{message} @ {path}"


def structure_section(value: Any, kind: Any, path: str) -> Any:
    """Structure one section strictly; a :class:`ConfigError` names each bad key path and value."""
    try:
        return _CONVERTER.structure(value, kind)
    except cattrs.BaseValidationError as exc:
        problems = "; ".join(_name_key(m, kind) for m in
                             cattrs.transform_error(exc, path=path, format_exception=_format_problem))
        raise ConfigError(problems) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(data: dict[str, Any], *, source: str = "config",
                 modules: tuple[ModuleSpec, ...] | None = None) -> Config:
    modules = _modules() if modules is None else modules
    by_section = {m.section: m for m in modules}
    unknown = sorted(set(data) - set(_CORE_SECTIONS) - set(by_section))
    if unknown:
        known = ", ".join(sorted([*_CORE_SECTIONS, *by_section]))
        raise ConfigError(f"invalid {source}: unknown section(s) {', '.join(map(repr, unknown))} (sections: {known})")
    problems: list[str] = []
    parsed: dict[str, Any] = {}
    for name, kind in [*_CORE_SECTIONS.items(), *((m.section, m.config_type) for m in modules)]:
        if name not in data:
            continue
        if not isinstance(data[name], dict):
            problems.append(f"{name}: expected a table ([{name}]), got {type(data[name]).__name__} {data[name]!r:.80}")
            continue
        try:
            parsed[name] = structure_section(data[name], kind, name)
        except ConfigError as exc:
            problems.append(exc.message)
    if problems:
        raise ConfigError(f"invalid {source}: {'; '.join(problems)}")
    config = Config(supervisor=parsed.get("supervisor", SupervisorConfig()),
                    restart=parsed.get("restart", BackoffPolicy()),
                    workers=parsed.get("workers", {}),
                    sections={m.section: parsed[m.section] if m.section in parsed else m.default_config()
                              for m in modules})
    problem = check_config(config, modules)
    if problem is not None:
        raise ConfigError(f"invalid {source}: {problem}")
    return config


def check_config(config: Config, modules: tuple[ModuleSpec, ...] | None = None) -> str | None:
    """Checks across sections (after each section validated on its own); the first problem, or None."""
    if (problem := check_worker_names(config.workers)) is not None:
        return problem
    frame = config.supervisor.max_frame_size
    if frame > ABSOLUTE_MAX_FRAME_SIZE:
        return (f"supervisor.max_frame_size {frame} is over the 4-byte length prefix's limit of "
                f"{ABSOLUTE_MAX_FRAME_SIZE}")
    if config.supervisor.max_queued_bytes < frame:
        return (f"supervisor.max_queued_bytes ({config.supervisor.max_queued_bytes}) must be at least "
                f"supervisor.max_frame_size ({frame})")
    for module in _modules() if modules is None else modules:
        if module.check is not None and (problem := module.check(config)) is not None:
            return problem
    return None


def load_config(path: Path | None) -> Config:
    """Read and validate ``path``; ``None`` gives the defaults."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    return parse_config(data, source=f"config file {str(path)!r}")
