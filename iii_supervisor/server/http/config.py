"""The ``[http]`` config section of the HTTP front."""

from __future__ import annotations

import attrs

from ...config import Config, positive

#: room for the rest of an HTTP call (headers, params) in the frame that carries a JSON body
FRAME_OVERHEAD = 256 * 1024


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


def check(config: Config) -> str | None:
    frame, body = config.supervisor.max_frame_size, config.section("http").max_body_size
    if body + FRAME_OVERHEAD > frame:
        # a JSON body travels inside the call's frame: it must fit with the request around it
        return (f"http.max_body_size ({body}) must be at least {FRAME_OVERHEAD} bytes below "
                f"supervisor.max_frame_size ({frame})")
    return None
