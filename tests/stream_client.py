"""What the stream endpoint's tests do as a WebSocket client: read one JSON message, join."""

from __future__ import annotations

from typing import Any

import orjson
import trio
from trio_websocket import WebSocketConnection


async def receive(ws: WebSocketConnection, timeout: float = 10) -> dict[str, Any]:
    """The next message, parsed (a bounded wait: a missing event fails the test)."""
    with trio.fail_after(timeout):
        return orjson.loads(await ws.get_message())


async def join(ws: WebSocketConnection, sub: str, stream: str, group: str) -> None:
    await ws.send_message(orjson.dumps({"type": "join", "data": {
        "subscriptionId": sub, "streamName": stream, "groupId": group}}).decode())
