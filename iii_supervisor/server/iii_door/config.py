"""The ``[iii]`` config section: the WebSocket door for workers written with the official iii SDKs."""

from __future__ import annotations

import attrs

from ...config import Config, positive

#: the SDK's own limit on one JSON message (iii-sdk 0.24+ raises websockets' max_size to it)
SDK_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


def _port(_inst: object, attribute: attrs.Attribute, value: int | None) -> None:  # type: ignore[type-arg]
    if value is not None and not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be between 0 and 65535 (0 picks a free port), got {value!r}")


def _token_env(_inst: object, attribute: attrs.Attribute, value: str | None) -> None:  # type: ignore[type-arg]
    if value is not None and (not value or not value.replace("_", "").isalnum()):
        raise ValueError(f"{attribute.name} must be the name of an environment variable, got {value!r}")


@attrs.frozen(kw_only=True)
class IiiConfig:
    #: Address of the door (``--iii-host``). The door is TCP: any local user can connect to it
    #: unless ``token_file``/``token_env`` or ``auth_function_id`` restrict it (docs/iii-door.md).
    host: str = "127.0.0.1"
    #: Its port (``--iii-port``); unset (default): the door is off. The reference engine's port
    #: is 49134; 0 picks a free port, logged at start.
    port: int | None = attrs.field(default=None, validator=_port)
    #: Largest message a worker may send, in bytes (larger: closed with 1009). Default: the
    #: SDK's own limit, so that anything the SDK sends passes.
    max_message_size: int = attrs.field(default=SDK_MAX_MESSAGE_SIZE, validator=positive)
    #: Sockets of *attached* workers at most (their worker and telemetry sockets); one more is
    #: refused with 503 at its upgrade. Spawned workers' sockets and channel sockets are admitted
    #: by their own secret and do not count, so other peers cannot lock them out.
    max_connections: int = attrs.field(default=256, validator=positive)
    #: Connections reading their upgrade request at once; one more cuts the oldest of them.
    max_handshakes: int = attrs.field(default=64, validator=positive)
    #: Open sockets of every kind at most (a file-descriptor bound); more are closed before their
    #: handshake.
    max_sockets: int = attrs.field(default=4096, validator=positive)
    #: Seconds a new connection has to finish its WebSocket handshake.
    handshake_timeout: float = attrs.field(default=10.0, validator=positive)
    #: Seconds a closing connection has to take our close frame and answer it before it is cut.
    close_timeout: float = attrs.field(default=1.0, validator=positive)
    #: Seconds between WebSocket pings of a connected worker (a peer that does not answer within
    #: ``ping_timeout`` is closed with 1001). Spawned workers are pinged by the supervisor's own
    #: ``ping_interval`` as well (a missing answer restarts them).
    ping_interval: float = attrs.field(default=20.0, validator=positive)
    ping_timeout: float = attrs.field(default=20.0, validator=positive)
    #: A file holding a shared secret: connections of workers the supervisor did not spawn must
    #: present ``Authorization: Bearer <secret>`` (the SDK sends ``$III_TOKEN``). Keep the file
    #: private (0600); its first line is the secret.
    token_file: str | None = None
    #: ... or the name of an environment variable of the supervisor that holds it.
    token_env: str | None = attrs.field(default=None, validator=_token_env)
    #: A function called with ``{headers, query_params, ip_address}`` of every upgrade of a
    #: worker the supervisor did not spawn (after the token check); it answers ``true`` /
    #: an object (``{"allowed": true}``) to let it in. ``false``, ``null`` or ``{"allowed": false}``
    #: refuse it with 403; an error, a timeout or a missing function with 401 (fail closed).
    auth_function_id: str | None = None
    #: Deadline of the auth function, in milliseconds.
    auth_timeout_ms: int = attrs.field(default=5_000, validator=positive)


def check(config: Config) -> str | None:
    door: IiiConfig = config.section("iii")
    if door.port is None:
        return None
    if door.token_file is not None and door.token_env is not None:
        return "iii.token_file and iii.token_env are both set: choose one"
    if door.max_message_size > config.supervisor.max_queued_bytes:
        return (f"iii.max_message_size ({door.max_message_size}) must be at most supervisor.max_queued_bytes "
                f"({config.supervisor.max_queued_bytes}): one message must fit in a worker's queue")
    return None
