"""Pure stream logic: client messages, the subscription index, event shapes, trigger configs.

No trio, no sockets. The module (module.py) does the I/O around these decisions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import orjson

from ...errors import InvocationError
from ...trigger_config import condition_function_id, known_keys, optional_strings
from ...trigger_config import short as _short

MAX_NAME = 1024

# --- client messages ------------------------------------------------------------------------


class ClientError(Exception):
    """A client message that cannot be served: answered with an ``error`` event (socket open)."""

    def __init__(self, code: str, message: str, subscription_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.subscription_id = subscription_id


@attrs.frozen
class Join:
    subscription_id: str
    stream_name: str
    group_id: str
    item_id: str | None


@attrs.frozen
class Leave:
    subscription_id: str


def parse_client_message(raw: str | bytes) -> Join | Leave:
    """``{"type": "join"|"leave", "data": {subscriptionId, streamName, groupId, id?}}``; raises
    :class:`ClientError` naming what is wrong."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ClientError("invalid_json", f"the message is not JSON ({exc}): {_short(raw)}") from None
    if not isinstance(msg, dict):
        raise ClientError("invalid_message", f"expected a JSON object with type and data, got {_short(msg)}")
    kind = msg.get("type")
    if kind not in ("join", "leave"):
        raise ClientError("unknown_message_type", f"unknown message type {_short(kind)} (known: join, leave)")
    data = msg.get("data")
    if not isinstance(data, dict):
        raise ClientError("invalid_message", f"{kind}: data must be an object, got {_short(data)}")
    sub = data.get("subscriptionId")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_NAME:
        raise ClientError("invalid_message", f"{kind}: subscriptionId must be a non-empty string of at most "
                                             f"{MAX_NAME} characters, got {_short(sub)}")
    if kind == "leave":
        return Leave(sub)
    names = []
    for field in ("streamName", "groupId"):
        value = data.get(field)
        if not isinstance(value, str) or not value or len(value) > MAX_NAME:
            raise ClientError("invalid_message", f"join: {field} must be a non-empty string of at most "
                                                 f"{MAX_NAME} characters, got {_short(value)}", sub)
        names.append(value)
    item = data.get("id")
    if item is not None and (not isinstance(item, str) or not item or len(item) > MAX_NAME):
        raise ClientError("invalid_message", f"join: id must be a non-empty string or absent, got {_short(item)}", sub)
    return Join(sub, names[0], names[1], item)


# --- events (what clients and `stream` triggers receive) ------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def change_event(stream: str, group: str, item: str | None, kind: str, data: Any,
                 timestamp: int | None = None) -> dict[str, Any]:
    """The reference engine's change event: ``kind`` is create / update / delete."""
    event: dict[str, Any] = {"type": "stream", "timestamp": now_ms() if timestamp is None else timestamp,
                             "streamName": stream, "groupId": group}
    if item is not None:
        event["id"] = item
    event["event"] = {"type": kind, "data": data}
    return event


def custom_event(stream: str, group: str, item: str | None, name: str, data: Any) -> dict[str, Any]:
    """What ``stream::send`` emits: ``event: {type: "event", event: {type: name, data}}``."""
    event = change_event(stream, group, item, "event", None)
    event["event"] = {"type": "event", "event": {"type": name, "data": data}}
    return event


def sync_event(join: Join, data: Any) -> dict[str, Any]:
    event = change_event(join.stream_name, join.group_id, join.item_id, "sync", data)
    event["subscriptionId"] = join.subscription_id
    return event


def unauthorized_event(join: Join) -> dict[str, Any]:
    event = change_event(join.stream_name, join.group_id, join.item_id, "unauthorized", None)
    del event["event"]["data"]
    event["subscriptionId"] = join.subscription_id
    return event


def error_event(code: str, message: str, subscription_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "error", "error": {"code": code, "message": message}}
    if subscription_id is not None:
        event["subscriptionId"] = subscription_id
    return event


def left_event(subscription_id: str) -> dict[str, Any]:
    return {"type": "left", "subscriptionId": subscription_id}


def trigger_payload(join: Join, context: Any) -> dict[str, Any]:
    """What ``stream:join`` / ``stream:leave`` functions receive."""
    return {"subscription_id": join.subscription_id, "stream_name": join.stream_name, "group_id": join.group_id,
            "id": join.item_id, "item_id": join.item_id, "context": context}


def denied(result: Any) -> bool:
    """A join handler's result that refuses the join (the reference: ``{"unauthorized": true}``)."""
    return isinstance(result, dict) and result.get("unauthorized") is True


# --- the subscription index ------------------------------------------------------------------


class SubscriptionIndex:
    """Who receives a change: connections subscribed to a group, or to one item of it.

    A connection with several subscriptions matching one change gets it once (the change event
    carries no subscription id: it is the same bytes for everyone)."""

    def __init__(self) -> None:
        #: (stream, group) → {connection: subscriptions}
        self.groups: dict[tuple[str, str], dict[Hashable, int]] = {}
        #: (stream, group, item) → {connection: subscriptions}
        self.items: dict[tuple[str, str, str], dict[Hashable, int]] = {}

    def add(self, conn: Hashable, join: Join) -> None:
        if join.item_id is None:
            table = self.groups.setdefault((join.stream_name, join.group_id), {})
        else:
            table = self.items.setdefault((join.stream_name, join.group_id, join.item_id), {})
        table[conn] = table.get(conn, 0) + 1

    def remove(self, conn: Hashable, join: Join) -> None:
        if join.item_id is None:
            key: Any = (join.stream_name, join.group_id)
            index: dict[Any, dict[Hashable, int]] = self.groups  # type: ignore[assignment]
        else:
            key = (join.stream_name, join.group_id, join.item_id)
            index = self.items  # type: ignore[assignment]
        table = index.get(key)
        if table is None or conn not in table:
            return
        if table[conn] > 1:
            table[conn] -= 1
        else:
            del table[conn]
            if not table:
                del index[key]

    def targets(self, stream: str, group: str, item: str | None) -> Iterable[Hashable]:
        """The connections a change of ``stream/group/item`` goes to, each once."""
        group_subs = self.groups.get((stream, group))
        item_subs = self.items.get((stream, group, item)) if item is not None and self.items else None
        if item_subs is None:
            return group_subs.keys() if group_subs is not None else ()
        if group_subs is None:
            return item_subs.keys()
        return group_subs.keys() | item_subs.keys()


# --- `stream` trigger configs --------------------------------------------------------------


@attrs.frozen
class StreamFilter:
    stream_name: str | None
    group_id: str | None
    item_id: str | None
    condition: str | None

    def matches(self, event: dict[str, Any]) -> bool:
        return ((self.stream_name is None or self.stream_name == event["streamName"])
                and (self.group_id is None or self.group_id == event["groupId"])
                and (self.item_id is None or self.item_id == event.get("id")))


def parse_stream_trigger(trigger_id: str, config: dict[str, Any] | None) -> StreamFilter:
    config = config or {}
    known = ("stream_name", "group_id", "item_id", "condition_function_id")
    known_keys(config, known, f"stream trigger {trigger_id!r}")
    optional_strings(config, known, f"stream trigger {trigger_id!r}")
    return StreamFilter(config.get("stream_name"), config.get("group_id"), config.get("item_id"),
                        config.get("condition_function_id"))


def parse_join_trigger(kind: str, trigger_id: str, config: dict[str, Any] | None) -> str | None:
    """``stream:join`` / ``stream:leave``: ``{condition_function_id?}`` (``stream_name`` is accepted and,
    as in the reference, ignored); returns the condition."""
    config = config or {}
    known_keys(config, ("condition_function_id", "stream_name"), f"{kind} trigger {trigger_id!r}",
               shown="condition_function_id")
    return condition_function_id(config, f"{kind} trigger {trigger_id!r}")


# --- built-in arguments ----------------------------------------------------------------------


def name_arg(data: Any, field: str, function: str, *, required: bool = True) -> str | None:
    if not isinstance(data, dict):
        raise InvocationError(f"{function} needs an object with stream_name, group_id …, got {_short(data)}",
                              code="invalid_argument")
    value = data.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise InvocationError(f"{function}: {field} must be a non-empty string of at most {MAX_NAME} "
                              f"characters, got {_short(value)}", code="invalid_argument")
    return value


def auth_request(headers: list[tuple[bytes, bytes]], target: str, addr: str) -> dict[str, Any]:
    """What the auth function gets: ``{headers, path, query_params, addr}`` (repeated query
    parameters become lists, as the HTTP front does)."""
    parts = urlsplit(target)
    query: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in query:
            query[key] = [*query[key], value] if isinstance(query[key], list) else [query[key], value]
        else:
            query[key] = value
    return {"headers": {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers},
            "path": parts.path or "/", "query_params": query, "addr": addr}


def origin_allowed(origin: str | None, allowed: tuple[str, ...], host: str | None = None) -> bool:
    """Whether an upgrade with this ``Origin`` may proceed.

    - no ``Origin`` (not a browser: a script, a server): allowed unless ``allowed`` lists origins
      without ``"*"``;
    - ``allowed`` empty (the default): the origin's host must be the host the client connected to
      (the ``Host`` header's, any port), so a page of another site cannot read the streams from a
      visitor's browser, while a page served by this machine's HTTP front can;
    - ``"*"`` in ``allowed``: any origin; else an exact match (``scheme://host[:port]``, case-insensitive).
    """
    if "*" in allowed:
        return True
    if origin is None:
        return not allowed
    if not allowed:
        if host is None:
            return False
        return _hostname(urlsplit(origin.strip()).netloc) == _hostname(host.strip())
    return origin.lower().rstrip("/") in {a.lower().rstrip("/") for a in allowed}


def _hostname(netloc: str) -> str:
    netloc = netloc.lower().rpartition("@")[2]
    if netloc.startswith("["):
        return netloc.partition("]")[0] + "]"
    return netloc.partition(":")[0]


def encode(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


Encoder = Callable[[dict[str, Any]], bytes]


# --- custom backends (a worker's stream::set(<name>) … serves that stream) -------------------------

#: the verbs a custom backend may serve (the official SDK's ``create_stream`` registers all but update)
BACKEND_VERBS = ("get", "set", "delete", "list", "list_groups", "update")
#: ``stream::<verb>`` of each verb (the hot path adds ``(<name>)``: no formatting per verb)
BACKEND_PREFIXES = tuple(f"stream::{verb}" for verb in BACKEND_VERBS)


def backend_function(verb: str, stream: str) -> str:
    """The id of the function that serves ``verb`` for ``stream`` when it has a custom backend."""
    return f"stream::{verb}({stream})"


def backend_write_result(function_id: str, verb: str, result: Any) -> tuple[Any, Any]:
    """``(old_value, new_value)`` from a backend's answer to a set or update (``{old_value?,
    new_value}``, the shape the official SDK's ``StreamSetResult`` dumps); anything else is refused."""
    if not isinstance(result, dict) or "new_value" not in result:
        raise InvocationError(f"custom stream backend {function_id} answered {_short(result)}; {verb} must return "
                              '{"old_value": ..., "new_value": ...}', code="stream_backend_error")
    return result.get("old_value"), result["new_value"]


def backend_delete_result(function_id: str, result: Any) -> Any:
    """``old_value`` from a backend's answer to a delete (``{old_value?}``)."""
    if not isinstance(result, dict):
        raise InvocationError(f"custom stream backend {function_id} answered {_short(result)}; delete must "
                              'return {"old_value": ...}', code="stream_backend_error")
    return result.get("old_value")


def backend_missing(stream: str, function_id: str) -> InvocationError:
    """The error for a call on a stream whose custom backend does not serve it (now)."""
    return InvocationError(f"stream {stream!r} has a custom backend, but {function_id} is not registered (did its "
                           "worker stop?); the call is refused rather than served from the built-in store",
                           code="stream_backend_unavailable")
