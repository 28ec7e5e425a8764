"""INTERFACE STUB (issue 13): the SDK telemetry socket ``/otel``. Being implemented on branch wt-b."""

from __future__ import annotations

from trio_websocket import WebSocketConnection

from ...invocation import Invoker


async def serve_otel(ws: WebSocketConnection, invoker: Invoker, *, peer_name: str) -> None:
    """Read telemetry frames (``LOGS``/``OTLP``/``MTRC`` + OTLP-JSON) until the peer closes."""
    raise NotImplementedError
