"""The ``[stream]`` config section."""

from __future__ import annotations

import attrs

from ...config import positive


@attrs.frozen(kw_only=True)
class StreamConfig:
    #: Address of the stream endpoint (``--stream-host``).
    host: str = "127.0.0.1"
    #: Its port (``--stream-port``); 0 picks a free port, logged at start.
    port: int = attrs.field(default=3112, validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    #: A function called with ``{headers, path, query_params, addr}`` of each upgrade request;
    #: it returns ``{context}`` (handed to join/leave handlers) or denies (401/403).
    auth_function_id: str | None = None
    #: ``Origin`` values accepted on the upgrade (exact ``scheme://host[:port]``; ``"*"``: any).
    #: Empty (default): a browser page must come from the host the client connected to (any port).
    allowed_origins: tuple[str, ...] = ()
    #: Largest client message, in bytes; larger ones close the connection with 1009.
    max_message_size: int = attrs.field(default=64 * 1024, validator=positive)
    #: Subscriptions one connection may hold; more joins get a ``too_many_subscriptions`` error.
    max_subscriptions: int = attrs.field(default=256, validator=positive)
    #: Bytes queued for a connection that does not read; beyond this it is closed with 1008.
    send_buffer_bytes: int = attrs.field(default=1024 * 1024, validator=positive)
    #: Open connections at most (more are refused before the handshake).
    max_connections: int = attrs.field(default=10_000, validator=positive)
    #: Seconds between pings; a connection without a pong ``ping_timeout`` seconds later is closed.
    ping_interval: float = attrs.field(default=20.0, validator=positive)
    ping_timeout: float = attrs.field(default=20.0, validator=positive)
    #: Seconds a new connection has for its WebSocket handshake.
    handshake_timeout: float = attrs.field(default=10.0, validator=positive)
    #: Seconds a closing connection has to take our close frame and answer it before it is cut.
    close_timeout: float = attrs.field(default=1.0, validator=positive)
    #: Deadline of each auth and join/leave handler call, in milliseconds.
    handler_timeout_ms: int = attrs.field(default=10_000, validator=positive)
    #: Largest item, in bytes of JSON (larger: VALUE_TOO_LARGE).
    max_value_size: int = attrs.field(default=1024 * 1024, validator=positive)
    #: Streams served by a worker's ``stream::set(<name>)`` … functions (a custom backend) from
    #: the start: calls on them are refused until the backend registers, never served from the
    #: store. (A stream also becomes custom when such a function is first seen registered.)
    custom_backends: tuple[str, ...] = ()
    #: Events queued per ``stream`` trigger (and for ``stream:leave`` handlers) before dropping.
    trigger_buffer: int = attrs.field(default=10_000, validator=positive)
