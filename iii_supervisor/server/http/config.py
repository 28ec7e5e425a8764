"""The ``[http]`` config section of the HTTP front."""

from __future__ import annotations

import attrs

from ...config import Config, positive, require_list

#: entries of ``[http] middleware`` at most
MAX_GLOBAL_MIDDLEWARE = 16

#: room for the rest of an HTTP call (headers, params) in the frame that carries a JSON body
FRAME_OVERHEAD = 256 * 1024


def _function_id(_inst: object, attribute: attrs.Attribute, value: str) -> None:  # type: ignore[type-arg]
    if not value.strip():
        raise ValueError(f"{attribute.name} must be a non-empty function id, got {value!r}")


@attrs.frozen(kw_only=True)
class GlobalMiddleware:
    """One ``[[http.middleware]]`` entry: a function called before every route's handler."""

    #: The middleware function (it need not exist at start; a request reaching it while it is
    #: not registered gets 503 ``function_not_found``).
    function_id: str = attrs.field(validator=_function_id)
    #: When it runs; "preHandler" is the only phase (as in the reference engine).
    phase: str = attrs.field(default="preHandler", validator=attrs.validators.in_(["preHandler"]))
    #: Order among the global middleware: lower runs first; equal priorities keep file order.
    priority: int = 0


def _bounded(_inst: object, attribute: attrs.Attribute, value: tuple[GlobalMiddleware, ...]) -> None:  # type: ignore[type-arg]
    if len(value) > MAX_GLOBAL_MIDDLEWARE:
        raise ValueError(f"{attribute.name} has {len(value)} entries, at most {MAX_GLOBAL_MIDDLEWARE} are allowed")


@attrs.frozen(kw_only=True)
class HttpConfig:
    #: Address of the HTTP front (``--http-host``).
    host: str = "127.0.0.1"
    #: Port of the HTTP front (``--http-port``); 0 picks a free port, logged at start.
    port: int = attrs.field(default=3111, validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    #: Largest request body accepted, in bytes (larger: 413).
    max_body_size: int = attrs.field(default=4 * 1024 * 1024, validator=positive)
    #: How long a handler may take to *start* its response, in milliseconds (then 504).
    request_timeout_ms: int = attrs.field(default=30_000, validator=positive)
    #: Seconds a client has to send a complete request head (a total, not an idle time); also the
    #: keep-alive idle time.
    header_timeout: float = attrs.field(default=10.0, validator=positive)
    #: Seconds a client may stay silent while sending a body.
    body_timeout: float = attrs.field(default=30.0, validator=positive)
    #: Open connections at most; more are answered 503 and closed.
    max_connections: int = attrs.field(default=1024, validator=positive)
    #: Open connections from one client address at most; more are answered 503 and closed.
    max_connections_per_client: int = attrs.field(default=256, validator=positive)
    #: Include handler stack traces in 500 responses.
    debug: bool = False
    #: Middleware run before every route's own (``[[http.middleware]]`` tables, see docs/http.md).
    middleware: tuple[GlobalMiddleware, ...] = attrs.field(default=(), validator=_bounded)

    def global_middleware(self) -> tuple[str, ...]:
        """The global middleware's function ids, in the order they run."""
        return tuple(m.function_id for m in sorted(self.middleware, key=lambda m: m.priority))


def check(config: Config) -> str | None:
    frame, body = config.supervisor.max_frame_size, config.section("http").max_body_size
    if body + FRAME_OVERHEAD > frame:
        # a JSON body travels inside the call's frame: it must fit with the request around it
        return (f"http.max_body_size ({body}) must be at least {FRAME_OVERHEAD} bytes below "
                f"supervisor.max_frame_size ({frame})")
    return None


require_list(tuple[GlobalMiddleware, ...], "a list of tables ([[http.middleware]] entries)", of_tables=True)
