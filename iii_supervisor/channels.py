"""The engine's channel table: streamed bodies between in-process parts and connected peers.

One table for the whole engine (the HTTP front uses it today; the stream endpoint will). A
channel belongs to one peer (a worker connection) and has an id unique in the engine:

- :meth:`ChannelTable.open_inbound` — the peer writes, we read: what it sends on the channel
  (chunks, controls, the close) lands in the channel's :class:`~iii_supervisor.inbox.Inbox`;
- :meth:`ChannelTable.open_outbound` — we write, the peer reads: nothing comes back.

The session hands every channel frame it receives to :meth:`ChannelTable.deliver`, which drops
frames for channels the sender does not own (so one worker cannot write into another's
response). When a peer goes away :meth:`ChannelTable.peer_closed` ends all its inbound channels.

Flow control: the peer may send only :data:`~iii_supervisor.protocol.CHANNEL_WINDOW` bytes ahead
of what the reader has passed on; :meth:`Channel.grant` gives window back as the reader
consumes. So the inbox stays bounded by one window without a bound of its own.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

from .inbox import Inbox
from .protocol import ChannelClose, ChannelControl, ChannelWindow, Chunk, ErrorBody, Message
from .protocol.channels import ChannelRef


class ChannelPeer(Protocol):
    """The far end of a channel: a connected worker."""

    def send_nowait(self, msg: Message | Chunk) -> None: ...


ChannelEvent = Chunk | ChannelControl | ChannelClose | ChannelWindow


class Channel:
    """One inbound channel: its id, its peer, and what the peer wrote on it."""

    __slots__ = ("id", "peer", "inbox", "_table", "writer_done", "apart", "writing")

    def __init__(self, channel_id: int, peer: ChannelPeer, table: ChannelTable) -> None:
        self.id = channel_id
        self.peer = peer
        self.inbox: Inbox[Any] = Inbox()
        self._table = table
        #: the peer will not write on it any more (it closed it, or its handler returned)
        self.writer_done = False
        #: the peer's frames for it travel apart from its results (a channel socket of the iii
        #: door), so they may come *after* the handler's result; ``writing``: that socket is open
        self.apart = False
        self.writing = False

    def ref(self) -> ChannelRef:
        return ChannelRef(self.id, "write")

    def grant(self, size: int) -> None:
        """Let the writer send ``size`` more bytes (what the reader just passed on)."""
        self.peer.send_nowait(ChannelWindow(channel_id=self.id, size=size))

    def abandon(self, code: str, message: str) -> None:
        """Tell a still-running writer that nobody reads: its next write raises."""
        if not self.writer_done:
            self.writer_done = True
            self.peer.send_nowait(ChannelClose(channel_id=self.id, error=ErrorBody(code=code, message=message)))

    def close(self) -> None:
        """Forget the channel; a late frame for it is dropped."""
        self._table._forget(self)


class ChannelTable:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._inbound: dict[int, Channel] = {}
        self._last = 0

    def _next_id(self) -> int:
        self._last = next(self._ids) % 2**32
        return self._last

    def issued(self, channel_id: int) -> bool:
        """Has an id this large been handed out yet? (A reference to a later one is forged.)"""
        return 0 < channel_id <= self._last

    def open_inbound(self, peer: ChannelPeer) -> Channel:
        channel = Channel(self._next_id(), peer, self)
        self._inbound[channel.id] = channel
        return channel

    def open_outbound(self, peer: ChannelPeer, *, empty: bool = False) -> ChannelRef:
        """A channel we write to ``peer`` (``empty``: nothing will be sent, the reader starts at its end)."""
        return ChannelRef(self._next_id(), "read", eof=empty)

    def deliver(self, peer: ChannelPeer, event: ChannelEvent) -> None:
        channel = self._inbound.get(event.channel_id)
        if channel is not None and channel.peer is peer:
            channel.inbox.put(event)

    def _forget(self, channel: Channel) -> None:
        if self._inbound.get(channel.id) is channel:
            del self._inbound[channel.id]
        channel.inbox.close()

    def peer_closed(self, peer: ChannelPeer) -> None:
        """``peer`` is gone: its inbound channels end (their readers see the end of the inbox).

        A scan, not an index by peer: a worker leaves rarely, a channel opens on every HTTP
        request, and the table holds at most one channel per request in progress."""
        for channel in [c for c in self._inbound.values() if c.peer is peer]:
            del self._inbound[channel.id]
            channel.inbox.close()

    def __len__(self) -> int:
        return len(self._inbound)

    def get(self, channel_id: int) -> Channel | None:
        """Inbound channel ``channel_id``, if it is still open."""
        return self._inbound.get(channel_id)

    def __contains__(self, channel_id: object) -> bool:
        """Is inbound channel ``channel_id`` still open?"""
        return channel_id in self._inbound
