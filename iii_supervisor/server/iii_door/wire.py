"""Sans-IO translation between the reference engine's WebSocket messages and ours (no trio here).

Our JSON messages are already iii-shaped (protocol/messages.py), so most messages pass through
our codec unchanged, with its strict decoding (an ill-typed field names itself). What differs:

- **in**: ``reattach`` (a reconnecting SDK presents its previous identity) has no equivalent in
  our protocol and becomes a :class:`Reattach`; ``registerservice`` (grouping only) is ignored;
  messages of our own protocol that make no sense here (``hello``, channel frames, which travel on
  their own sockets) are refused like unknown types;
- **out**: ``functionregistered`` is never sent (iii-sdk 0.25 validates it with its own model and
  would take it for the local-dispatch feature); a refused registration becomes
  ``registrationrejected`` instead, and ``triggerregistrationresult`` is sent only on error (as
  the reference engine does);
- **channel references** inside call payloads and results: ours are ``{channel_id: int,
  direction}``, the SDK's ``{channel_id: str, access_key, direction}``. :func:`map_refs` rewrites
  them with a converter the caller supplies (the door's ChannelEndpoints), copying only the
  containers on the way to a reference (a payload may be shared by several deliveries).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson

from ...errors import MalformedMessage, UnknownMessageType
from ...protocol import (
    ChannelClose,
    ChannelControl,
    ChannelWindow,
    Error,
    FunctionRegistered,
    Hello,
    InvocationResult,
    InvokeFunction,
    Message,
    TriggerRegistrationResult,
    WorkerRegistered,
)
from ...protocol.codec import MAX_ID_LENGTH, structure, unstructure

#: ``registrationrejected`` code for a refused function. iii-sdk 0.25 treats every other code as
#: fatal (it stops and never reconnects), and a refused function must not kill the worker: so
#: every per-function refusal uses this code, and the supervisor's log says the real reason.
FUNCTION_REJECTED: Final = "FUNCTION_NAMESPACE_CONFLICT"
#: the namespace the reference engine reports (we have one)
NAMESPACE: Final = "default"
#: message types the SDKs send that carry nothing for us
IGNORED: Final = frozenset({"registerservice"})
#: types of our protocol a WebSocket peer may not send (answered like unknown types)
_NOT_HERE: Final = (Hello, WorkerRegistered, FunctionRegistered, ChannelControl, ChannelClose, ChannelWindow, Error)
#: how deep :func:`map_refs` looks for channel references
MAX_REF_DEPTH: Final = 32


@attrs.define(kw_only=True)
class Reattach:
    """First frame of a reconnecting SDK worker: the identity its previous connection had."""

    previous_worker_id: str
    reattach_token: str | None = None


def decode(text: str | bytes) -> Message | Reattach | None:
    """One text message from a worker: our message, a :class:`Reattach`, or None (ignored).
    Raises :class:`MalformedMessage` / :class:`UnknownMessageType` like the Unix door."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"a message must be a JSON object, got {type(obj).__name__}")
    tag = obj.get("type")
    if tag == "reattach":
        return _reattach(obj)
    if tag in IGNORED:
        return None
    msg = structure(obj)
    if isinstance(msg, _NOT_HERE):
        raise UnknownMessageType(f"message type {tag!r} is not part of the iii worker protocol over WebSocket")
    return msg


def _reattach(obj: dict[str, Any]) -> Reattach:
    previous, token = obj.get("previous_worker_id"), obj.get("reattach_token")
    if type(previous) is not str or len(previous) > MAX_ID_LENGTH:
        raise MalformedMessage(f"invalid 'reattach' message: previous_worker_id must be a string of at most "
                               f"{MAX_ID_LENGTH} characters, got {previous!r:.80}")
    if token is not None and (type(token) is not str or len(token) > MAX_ID_LENGTH):
        raise MalformedMessage(f"invalid 'reattach' message: reattach_token must be a string, got {token!r:.80}")
    return Reattach(previous_worker_id=previous, reattach_token=token)


def worker_registered(worker_id: str, reattach_token: str) -> bytes:
    """The engine's first message on a new connection (there is no client hello)."""
    return orjson.dumps({"type": "workerregistered", "worker_id": worker_id, "reattach_token": reattach_token})


def encode(msg: Message, *, owner_of: Callable[[str], str] | None = None) -> bytes | None:
    """The reference's JSON for ``msg``, or None when the SDK is not told (acks of success).

    ``owner_of(function_id)`` names the worker that holds a function (for a rejection)."""
    cls = type(msg)
    if cls is InvokeFunction or cls is InvocationResult:
        return orjson.dumps(unstructure(msg))
    if cls is FunctionRegistered:
        assert isinstance(msg, FunctionRegistered)
        if msg.error is None:
            return None
        return orjson.dumps({"type": "registrationrejected", "code": FUNCTION_REJECTED, "namespace": NAMESPACE,
                             "function_id": msg.id, "owner_worker_id": owner_of(msg.id) if owner_of else "",
                             "message": msg.error.message})
    if cls is TriggerRegistrationResult:
        assert isinstance(msg, TriggerRegistrationResult)
        if msg.error is None:
            return None
    return orjson.dumps(unstructure(msg))


def has_refs(data: bytes | str) -> bool:
    """Whether encoded JSON may hold a channel reference (cheap: a substring search)."""
    return (b'"channel_id"' in data) if isinstance(data, bytes) else ('"channel_id"' in data)


def map_refs(value: Any, convert: Callable[[dict[str, Any]], dict[str, Any] | None], depth: int = 0) -> Any:
    """``value`` with every dict for which ``convert`` returns a replacement replaced by it.
    Containers are copied only on the way to a replacement; the rest is shared."""
    if depth > MAX_REF_DEPTH:
        return value
    if type(value) is dict:
        replaced = convert(value)
        if replaced is not None:
            return replaced
        out: dict[str, Any] | None = None
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                new = map_refs(item, convert, depth + 1)
                if new is not item:
                    if out is None:
                        out = dict(value)
                    out[key] = new
        return value if out is None else out
    if type(value) is list:
        lst: list[Any] | None = None
        for i, item in enumerate(value):
            if type(item) is dict or type(item) is list:
                new = map_refs(item, convert, depth + 1)
                if new is not item:
                    if lst is None:
                        lst = list(value)
                    lst[i] = new
        return value if lst is None else lst
    return value


def is_sdk_ref(value: dict[str, Any]) -> bool:
    """The reference's shape: ``{channel_id: str, access_key: str, direction: read|write}``."""
    return (type(value.get("channel_id")) is str and type(value.get("access_key")) is str
            and value.get("direction") in ("read", "write"))


#: close codes (RFC 6455) for what a peer did wrong
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED: Final = 1003
CLOSE_TOO_BIG: Final = 1009


def close_code(error_code: str) -> int:
    """The WebSocket close code for one of our protocol error codes."""
    if error_code in ("frame_too_large", "message_too_large"):
        return CLOSE_TOO_BIG
    if error_code in ("unknown_message_type", "binary_frame"):
        return CLOSE_UNSUPPORTED
    return CLOSE_PROTOCOL_ERROR


def close_reason(message: str) -> str:
    """A close frame's reason is at most 123 bytes of UTF-8."""
    raw = message.encode()
    if len(raw) <= 123:
        return message
    return raw[:120].decode(errors="ignore") + "..."


@attrs.frozen
class Target:
    """What an upgrade's request target asks for: ``kind`` is ``worker``, ``otel``, ``channel``
    or ``None`` (nothing here: 404); ``query`` its parameters (``token``, ``key``, ``dir`` …)."""

    kind: str | None
    query: dict[str, list[str]]
    channel_id: str = ""

    def param(self, name: str) -> str:
        values = self.query.get(name)
        return values[0] if values else ""


_CHANNELS: Final = "/ws/channels/"


def route(target: str) -> Target:
    """Route a request target as both SDKs build them from the engine address.

    The Python SDK keeps an address's query at the end (``/ws/channels/ID?token=T&key=K&dir=D``,
    ``/otel?token=T``); the Node SDK appends the channel path to the address as is, so
    ``ws://host/?token=T`` gives ``/?token=T/ws/channels/ID?key=K&dir=D``. Both are taken."""
    at = target.find(_CHANNELS)
    if at >= 0 and (at == 0 or target.startswith("/?")):
        channel_id, _, rest = target[at + len(_CHANNELS):].partition("?")
        query = parse_qs(rest, keep_blank_values=True)
        if at > 0:  # the address's own query, before the path
            for key, values in parse_qs(target[2:at], keep_blank_values=True).items():
                query.setdefault(key, values)
        return Target("channel", query, channel_id.rstrip("/"))
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.rstrip("/") or "/"
    kind = "worker" if path == "/" else "otel" if path == "/otel" else None
    return Target(kind, query)
