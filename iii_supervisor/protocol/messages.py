"""Wire messages: one attrs class per ``"type"`` tag, in the iii vocabulary.

Field names follow the reference engine (shared/reference/iii-engine.md §1.2) so that a bridge
for the official SDKs can reuse the same registry. Optional fields default to ``None`` and are
omitted on the wire when unset. Unknown *fields* are ignored (the official SDKs send extras such
as ``traceparent`` or ``namespace``); unknown *types* are a protocol error.

Messages that the reference engine does not have are marked "iii-supervisor" below: the first
frame ``hello`` (token authentication), the ``functionregistered`` ack, and channel flow control.

Messages are treated as immutable values but are not ``frozen``: a frozen attrs instance costs
about 3x more to build (one ``object.__setattr__`` per field), and the invocation path builds
four of them per routed call.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

from ..errors import EngineError

JSONObject = dict[str, Any]

__all__ = [
    "ErrorBody",
    "Action",
    "Hello",
    "WorkerReady",
    "WorkerRegistered",
    "Error",
    "Ping",
    "Pong",
    "RegisterFunction",
    "FunctionRegistered",
    "UnregisterFunction",
    "RegisterTrigger",
    "UnregisterTrigger",
    "TriggerRegistrationResult",
    "RegisterTriggerType",
    "UnregisterTriggerType",
    "InvokeFunction",
    "InvocationResult",
    "ChannelControl",
    "ChannelClose",
    "ChannelWindow",
    "Message",
    "JSONObject",
    "MESSAGE_TYPES",
    "TYPE_TAGS",
    "CHANNEL_WINDOW",
    "CHANNEL_CHUNK",
]


@attrs.define(kw_only=True)
class ErrorBody:
    code: str
    message: str
    stacktrace: str | None = None

    @classmethod
    def of(cls, exc: EngineError) -> ErrorBody:
        """The wire form of an engine error."""
        return cls(code=exc.code, message=exc.message, stacktrace=exc.stacktrace)


@attrs.define(kw_only=True)
class Action:
    """How a call is delivered: ``void`` (fire and forget) or ``enqueue`` (through a queue)."""

    type: Literal["void", "enqueue"]
    queue: str | None = None


# --- connection -----------------------------------------------------------------------------


@attrs.define(kw_only=True)
class Hello:
    """iii-supervisor: first frame of a worker; presents the secret token it was spawned with."""

    token: str
    name: str | None = None
    pid: int | None = None


@attrs.define(kw_only=True)
class WorkerRegistered:
    worker_id: str
    name: str | None = None
    #: iii-supervisor: the largest frame the supervisor accepts
    max_frame_size: int | None = None


@attrs.define(kw_only=True)
class Error:
    """A fatal error; the sender closes the connection right after it."""

    error: ErrorBody


@attrs.define(kw_only=True)
class WorkerReady:
    """iii-supervisor: the worker has registered everything it registers at start (the SDK sends
    it when the script's main code ends, or on ``iii.ready()``); it now counts as running."""


@attrs.define(kw_only=True)
class Ping:
    pass


@attrs.define(kw_only=True)
class Pong:
    pass


# --- functions ------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class RegisterFunction:
    id: str
    description: str | None = None
    request_format: Any = None
    response_format: Any = None
    metadata: JSONObject | None = None
    #: set: an *external HTTP function*, served by the engine calling this endpoint
    #: (``{url, method="POST", timeout_ms?, headers?, auth?}``, as the reference engine and the
    #: official SDK's ``HttpInvocationConfig``). Its fields are checked at registration (a bad
    #: one refuses the function, naming the field), not here: a wrong field must not cost the
    #: worker its connection.
    invocation: JSONObject | None = None


@attrs.define(kw_only=True)
class FunctionRegistered:
    """iii-supervisor: the engine's answer to ``registerfunction`` (``error`` set on refusal)."""

    id: str
    error: ErrorBody | None = None


@attrs.define(kw_only=True)
class UnregisterFunction:
    id: str


# --- triggers -------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class RegisterTrigger:
    id: str
    trigger_type: str
    function_id: str
    config: JSONObject | None = None
    metadata: JSONObject | None = None


@attrs.define(kw_only=True)
class UnregisterTrigger:
    id: str
    trigger_type: str | None = None


@attrs.define(kw_only=True)
class TriggerRegistrationResult:
    """Answer to ``registertrigger``. The reference engine only sends failures; we always answer."""

    id: str
    trigger_type: str
    function_id: str
    error: ErrorBody | None = None


@attrs.define(kw_only=True)
class RegisterTriggerType:
    id: str
    description: str = ""
    trigger_request_format: Any = None
    call_request_format: Any = None


@attrs.define(kw_only=True)
class UnregisterTriggerType:
    id: str


# --- invocation -----------------------------------------------------------------------------


@attrs.define(kw_only=True)
class InvokeFunction:
    """A call. ``invocation_id`` is absent for fire-and-forget (``void``) calls."""

    function_id: str
    data: Any = None
    invocation_id: str | None = None
    action: Action | None = None
    timeout_ms: int | None = None
    metadata: JSONObject | None = None
    traceparent: str | None = None
    baggage: str | None = None


@attrs.define(kw_only=True)
class InvocationResult:
    invocation_id: str | None
    function_id: str = ""
    result: Any = None
    error: ErrorBody | None = None
    traceparent: str | None = None


# --- channels (streamed bodies) ---------------------------------------------------------------


#: Bytes a channel writer may send before the reader's first ``channelwindow`` grant.
CHANNEL_WINDOW: Final = 256 * 1024
#: Largest body chunk a writer sends in one frame.
CHANNEL_CHUNK: Final = 64 * 1024


@attrs.define(kw_only=True)
class ChannelControl:
    """iii-supervisor: a JSON control item on a channel (``set_status``/``set_headers`` for HTTP)."""

    channel_id: int
    data: JSONObject


@attrs.define(kw_only=True)
class ChannelClose:
    """iii-supervisor: the writer of a channel is done (``error`` set if it failed)."""

    channel_id: int
    error: ErrorBody | None = None


@attrs.define(kw_only=True)
class ChannelWindow:
    """iii-supervisor: the reader of a channel grants the writer ``size`` more bytes."""

    channel_id: int
    size: int


Message = (
    Hello
    | WorkerRegistered
    | WorkerReady
    | Error
    | Ping
    | Pong
    | RegisterFunction
    | FunctionRegistered
    | UnregisterFunction
    | RegisterTrigger
    | UnregisterTrigger
    | TriggerRegistrationResult
    | RegisterTriggerType
    | UnregisterTriggerType
    | InvokeFunction
    | InvocationResult
    | ChannelControl
    | ChannelClose
    | ChannelWindow
)

#: ``"type"`` tag → class. The tag is the lowercased class name, as in the reference engine.
MESSAGE_TYPES: Final[dict[str, type[Message]]] = {
    cls.__name__.lower(): cls  # type: ignore[misc]
    for cls in Message.__args__  # type: ignore[attr-defined]
}
TYPE_TAGS: Final[dict[type[Message], str]] = {cls: tag for tag, cls in MESSAGE_TYPES.items()}
