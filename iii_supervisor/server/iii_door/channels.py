"""INTERFACE STUB (issue 13): channels of WebSocket-door workers. Being implemented on branch wt-b;
the door (branch wt-a) codes against these signatures. Nothing here is final behaviour."""

from __future__ import annotations

from typing import Any

from trio_websocket import WebSocketConnection

from ...channels import ChannelTable
from ...protocol.channels import ChannelRef
from ...registry import Registry


class ChannelEndpoints:
    """Every WebSocket-door channel end, engine-wide: ``/ws/channels/{id}?key=&dir=``."""

    def __init__(self, table: ChannelTable, registry: Registry) -> None:
        self.table = table
        self.registry = registry

    def install(self) -> None:
        """Register the ``engine::channels::create`` built-in."""
        raise NotImplementedError

    def to_wire(self, session: Any, ref: ChannelRef) -> dict[str, Any]:
        """The reference SDK's shape ``{channel_id: str, access_key, direction}`` for a channel
        of ours that ``session`` (a WebSocket-door worker) is to use; mints the access key."""
        raise NotImplementedError

    def from_wire(self, session: Any, value: Any) -> ChannelRef | None:
        """Our ChannelRef for a reference-shaped dict a WebSocket-door worker sent, or None."""
        raise NotImplementedError

    def outgoing(self, session: Any, msg: Any) -> bool:
        """Take a channel message (Chunk, ChannelClose, ChannelWindow, ChannelControl) the engine
        sends to ``session``: True if consumed (it belongs on a channel socket, not the main one)."""
        raise NotImplementedError

    async def serve(self, ws: WebSocketConnection, channel_id: str, key: str, direction: str) -> None:
        """Serve one channel socket until either side closes (the door checked nothing but the path)."""
        raise NotImplementedError

    def session_closed(self, session: Any) -> None:
        """``session`` is gone: drop its channel ends."""
        raise NotImplementedError
