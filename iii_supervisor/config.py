"""The configuration file (TOML), structured and validated with cattrs.

Every key has a default, so no file is needed. Unknown keys and ill-typed values are errors that
name the key path and the value (``supervisor.grace_period: expected a number, got 'ten'``).
Command-line flags override the file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs
import cattrs

from .errors import ConfigError
from .process.policy import BackoffPolicy
from .protocol import DEFAULT_MAX_FRAME_SIZE
from .protocol.frames import ABSOLUTE_MAX_FRAME_SIZE

#: room for the rest of an HTTP call (headers, params) in the frame that carries a JSON body
_FRAME_OVERHEAD = 256 * 1024


def _positive(_inst: Any, attribute: attrs.Attribute, value: float) -> None:  # type: ignore[type-arg]
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class SupervisorConfig:
    #: Directory for the sockets and the lock (default: see ``server.unix.default_runtime_dir``).
    runtime_dir: str | None = None
    #: Seconds a worker gets between SIGTERM and SIGKILL.
    grace_period: float = attrs.field(default=10.0, validator=_positive)
    #: Largest frame accepted on the worker and control sockets, in bytes.
    max_frame_size: int = attrs.field(default=DEFAULT_MAX_FRAME_SIZE, validator=_positive)
    #: Bytes queued for one worker (its socket not taking them) before calls to it fail at once
    #: with ``worker_overloaded``; at least ``max_frame_size``.
    max_queued_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    #: Default deadline of a call, in milliseconds (per call: ``timeout_ms``).
    invocation_timeout_ms: int = attrs.field(default=30_000, validator=_positive)
    #: Seconds a new worker connection has to present its token.
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Log level of the supervisor's own messages.
    log_level: str = attrs.field(default="info", validator=attrs.validators.in_(["debug", "info", "warning", "error"]))


@attrs.frozen(kw_only=True)
class HttpConfig:
    #: Address of the HTTP front (``--http-host``).
    host: str = "127.0.0.1"
    #: Port of the HTTP front (``--http-port``); 0 picks a free port, logged at start.
    port: int = attrs.field(default=3111, validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    #: Largest request body accepted, in bytes (larger: 413).
    max_body_size: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    #: How long a handler may take to *start* its response, in milliseconds (then 504).
    request_timeout_ms: int = attrs.field(default=30_000, validator=_positive)
    #: Seconds a client has to send a complete request head; also the keep-alive idle time.
    header_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Seconds a client may stay silent while sending a body.
    body_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Open connections at most; more are answered 503 and closed.
    max_connections: int = attrs.field(default=1024, validator=_positive)
    #: Include handler stack traces in 500 responses.
    debug: bool = False


@attrs.frozen(kw_only=True)
class Config:
    supervisor: SupervisorConfig = SupervisorConfig()
    restart: BackoffPolicy = BackoffPolicy()
    http: HttpConfig = HttpConfig()


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
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
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


_FIELD_AT_START = re.compile(r"'?([a-z_]+)'?(?= |$)")


def _name_key(problem: str) -> str:
    """``"factor must be at least 1, got 0.5 @ $.restart"`` → ``"restart.factor must be …"``.

    A validator of a section (attrs, run in ``__init__``) is reported at the section's path;
    its message starts with the field's name, which then joins the path, so that every problem
    names its full key (``restart.factor``) the way ill-typed values do."""
    message, sep, path = problem.rpartition(" @ ")
    if not sep:
        return problem
    path = path.removeprefix("$").removeprefix(".")
    match = _FIELD_AT_START.match(message)
    section = attrs.fields_dict(attrs.resolve_types(Config)).get(path)
    if match and section is not None and isinstance(section.type, type) and attrs.has(section.type) \
            and match.group(1) in attrs.fields_dict(section.type):
        return f"{path}.{match.group(1)}{message[match.end():]}"
    return f"{message} @ {path}"


def parse_config(data: dict[str, Any], *, source: str = "config") -> Config:
    try:
        config = _CONVERTER.structure(data, Config)
    except cattrs.BaseValidationError as exc:
        problems = "; ".join(_name_key(m) for m in cattrs.transform_error(exc, path="$", format_exception=_format_problem))
        raise ConfigError(f"invalid {source}: {problems}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {source}: {exc}") from None
    frame, body = config.supervisor.max_frame_size, config.http.max_body_size
    if frame > ABSOLUTE_MAX_FRAME_SIZE:
        raise ConfigError(f"invalid {source}: supervisor.max_frame_size {frame} is over the 4-byte length "
                          f"prefix's limit of {ABSOLUTE_MAX_FRAME_SIZE}")
    if config.supervisor.max_queued_bytes < frame:
        raise ConfigError(f"invalid {source}: supervisor.max_queued_bytes ({config.supervisor.max_queued_bytes}) "
                          f"must be at least supervisor.max_frame_size ({frame})")
    if body + _FRAME_OVERHEAD > frame:
        # a JSON body travels inside the call's frame: it must fit with the request around it
        raise ConfigError(f"invalid {source}: http.max_body_size ({body}) must be at least {_FRAME_OVERHEAD} "
                          f"bytes below supervisor.max_frame_size ({frame})")
    return config


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
