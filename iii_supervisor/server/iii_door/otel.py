"""The SDK's telemetry socket ``/otel``: OTLP log records become entries of the log module.

The official SDKs open a second WebSocket to ``<engine url>/otel`` and send binary frames: a
4-byte prefix, then OTLP-JSON — ``LOGS`` (an ``ExportLogsServiceRequest``), ``OTLP`` (spans) and
``MTRC`` (metrics). Log records are decoded here (sans-IO: :func:`log_entries`) and recorded
through the ``engine::log::entries`` built-in of the log module, under the worker's name, so
``iii-supervisor logs`` shows them and ``log`` triggers fire. Spans and metrics are accepted and
dropped (counted): we have no trace or metrics store for them.

Bad input closes the socket (the SDK reconnects, with a warning): a text frame or an unknown
prefix 1003, a frame over :data:`MAX_TELEMETRY_FRAME` 1009, a ``LOGS`` frame that is not
OTLP-JSON 1002. Frames are read one at a time and each batch is recorded before the next is
read, so a fast sender is slowed down rather than buffered.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from trio_websocket import ConnectionClosed, WebSocketConnection

from ...errors import EngineError
from ...invocation import Invoker

log = logging.getLogger(__name__)

#: Largest telemetry frame accepted (the SDK exports one log record per frame by default).
MAX_TELEMETRY_FRAME = 16 * 1024 * 1024
#: Log records taken from one frame at most (the rest are dropped and counted).
MAX_RECORDS_PER_FRAME = 4096
#: Nesting followed in an attribute value; deeper parts become a string.
MAX_DEPTH = 16

PREFIXES = (b"LOGS", b"OTLP", b"MTRC")


class BadTelemetry(ValueError):
    """A ``LOGS`` frame whose body is not OTLP-JSON."""


def level_of(severity_number: Any, severity_text: Any) -> str:
    """Our level for an OTLP severity (number 1–24 first, then the text)."""
    if isinstance(severity_number, int) and not isinstance(severity_number, bool) and 1 <= severity_number <= 24:
        return ("debug", "info", "warn", "error")[max(0, (severity_number - 5) // 4 if severity_number < 21 else 3)]
    text = severity_text.lower() if isinstance(severity_text, str) else ""
    for prefix, level in (("trace", "debug"), ("debug", "debug"), ("info", "info"), ("warn", "warn"),
                          ("err", "error"), ("fatal", "error"), ("crit", "error")):
        if text.startswith(prefix):
            return level
    return "info"


def any_value(value: Any, depth: int = 0) -> Any:
    """A plain value for an OTLP ``AnyValue`` (``{"stringValue": …}``, ``{"kvlistValue": …}`` …)."""
    if not isinstance(value, dict):
        return value
    if depth >= MAX_DEPTH:
        return orjson.dumps(value, default=str).decode()[:1024]
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "intValue" in value:
        raw = value["intValue"]  # OTLP-JSON writes int64 as a string
        try:
            return int(raw)
        except (TypeError, ValueError):
            return raw
    if "doubleValue" in value:
        return value["doubleValue"]
    if "bytesValue" in value:
        return value["bytesValue"]
    if "arrayValue" in value:
        values = (value["arrayValue"] or {}).get("values") if isinstance(value["arrayValue"], dict) else None
        return [any_value(v, depth + 1) for v in values] if isinstance(values, list) else []
    if "kvlistValue" in value:
        values = (value["kvlistValue"] or {}).get("values") if isinstance(value["kvlistValue"], dict) else None
        return attributes(values, depth + 1)
    return None


def attributes(items: Any, depth: int = 0) -> dict[str, Any]:
    """An OTLP attribute list ``[{key, value}]`` as a dict."""
    out: dict[str, Any] = {}
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                out[item["key"]] = any_value(item.get("value"), depth + 1)
    return out


def _hex_id(value: Any, length: int) -> str | None:
    if isinstance(value, str) and len(value) == length and value.strip("0"):
        try:
            int(value, 16)
        except ValueError:
            return None
        return value.lower()
    return None


def log_entries(body: bytes) -> tuple[list[dict[str, Any]], int]:
    """The entries for ``engine::log::entries`` in an OTLP-JSON ``ExportLogsServiceRequest``,
    and how many records were dropped over :data:`MAX_RECORDS_PER_FRAME`. Raises BadTelemetry."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadTelemetry(f"LOGS frame is not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("resourceLogs", []), list):
        raise BadTelemetry("LOGS frame is not an OTLP ExportLogsServiceRequest (no resourceLogs list)")
    entries: list[dict[str, Any]] = []
    dropped = 0
    for resource_logs in request.get("resourceLogs", []):
        if not isinstance(resource_logs, dict):
            continue
        for scope_logs in resource_logs.get("scopeLogs") or ():
            if not isinstance(scope_logs, dict):
                continue
            for record in scope_logs.get("logRecords") or ():
                if not isinstance(record, dict):
                    continue
                if len(entries) >= MAX_RECORDS_PER_FRAME:
                    dropped += 1
                    continue
                try:
                    entries.append(_entry(record))
                except TypeError as exc:  # orjson: a body or data nested deeper than it encodes
                    raise BadTelemetry(f"LOGS record cannot be re-encoded as JSON: {exc}") from None
    return entries, dropped


def _entry(record: dict[str, Any]) -> dict[str, Any]:
    body = any_value(record.get("body"))
    message = body if isinstance(body, str) else orjson.dumps(body, default=str).decode()
    attrs = attributes(record.get("attributes"))
    data = attrs.pop("log.data", None)  # what the SDK's Logger puts its `data` argument in
    attrs.pop("service.name", None)  # the Logger's service_name: ignored, as our own SDK's is
    # the Node SDK's Logger puts the ids in attributes rather than in the record
    attr_trace, attr_span = attrs.pop("trace_id", None), attrs.pop("span_id", None)
    trace_id = _hex_id(record.get("traceId"), 32) or _hex_id(attr_trace, 32)
    span_id = _hex_id(record.get("spanId"), 16) or _hex_id(attr_span, 16)
    if attrs:  # other attributes (a logging bridge's code.* …) are kept beside the data
        data = {"data": data, "attributes": attrs} if data is not None else {"attributes": attrs}
    if data is not None:  # (raw lists are passed through as is: the store must be able to encode them)
        orjson.dumps(data)
    entry: dict[str, Any] = {
        "level": level_of(record.get("severityNumber"), record.get("severityText")),
        "message": message,
        "data": data,
        "trace_id": trace_id,
        "span_id": span_id,
    }
    return entry


async def serve_otel(ws: WebSocketConnection, invoker: Invoker, *, peer_name: str) -> None:
    """Read telemetry frames (``LOGS``/``OTLP``/``MTRC`` + OTLP-JSON) until the peer closes."""
    ignored = 0
    try:
        while True:
            frame = await ws.get_message()
            if isinstance(frame, str):
                await ws.aclose(1003, "telemetry frames are binary: LOGS, OTLP or MTRC + OTLP-JSON")
                return
            if len(frame) > MAX_TELEMETRY_FRAME:
                await ws.aclose(1009, f"telemetry frames are at most {MAX_TELEMETRY_FRAME} bytes")
                return
            prefix = frame[:4]
            if prefix not in PREFIXES:
                await ws.aclose(1003, f"unknown telemetry frame prefix {prefix!r:.20} (LOGS, OTLP, MTRC)")
                return
            if prefix != b"LOGS":
                ignored += 1  # spans and metrics: accepted, not kept
                continue
            try:
                entries, dropped = log_entries(frame[4:])
            except BadTelemetry as exc:
                await ws.aclose(1002, str(exc)[:120])
                return
            if dropped:
                log.warning("%s: %d log records over %d in one telemetry frame dropped", peer_name, dropped,
                            MAX_RECORDS_PER_FRAME)
            if entries:
                try:
                    await invoker.call("engine::log::entries", {"worker_name": peer_name, "entries": entries})
                except EngineError as exc:  # no log module: the records are dropped, the socket stays
                    log.debug("%s: telemetry log records not recorded: %s", peer_name, exc)
    except ConnectionClosed:
        pass
    finally:
        if ignored:
            log.debug("%s: %d span/metric telemetry frames accepted and dropped", peer_name, ignored)
