"""The channel reference (protocol/channels.py) and the engine's channel table (channels.py)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from iii_supervisor.channels import ChannelTable
from iii_supervisor.protocol import ChannelClose, ChannelWindow, Chunk
from iii_supervisor.protocol.channels import ChannelRef


class Peer:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_nowait(self, msg: Any) -> None:
        self.sent.append(msg)


def test_a_reference_round_trips_and_garbage_is_not_one() -> None:
    for ref in (ChannelRef(7, "read"), ChannelRef(8, "write"), ChannelRef(9, "read", eof=True)):
        assert ChannelRef.parse(ref.to_wire()) == ref
        assert ChannelRef.parse(ref.to_wire(), ref.direction) == ref
    assert ChannelRef(7, "read").to_wire() == {"channel_id": 7, "direction": "read"}
    assert ChannelRef.parse(ChannelRef(7, "read").to_wire(), "write") is None
    for garbage in (None, 7, "x", [], {}, {"channel_id": "7", "direction": "read"},
                    {"channel_id": True, "direction": "read"}, {"channel_id": 7, "direction": "sideways"}):
        assert ChannelRef.parse(garbage) is None, garbage


def test_frames_reach_only_the_channel_of_their_own_peer() -> None:
    table = ChannelTable()
    owner, other = Peer(), Peer()
    channel = table.open_inbound(owner)
    table.deliver(other, Chunk(channel.id, b"forged"))  # another worker cannot write into it
    table.deliver(owner, Chunk(channel.id, b"ok"))
    table.deliver(owner, Chunk(channel.id + 1000, b"unknown"))  # dropped
    assert len(channel.inbox) == 1
    channel.grant(10)
    channel.abandon("gone", "nobody reads")
    channel.abandon("gone", "twice")  # once only
    assert owner.sent == [ChannelWindow(channel_id=channel.id, size=10),
                          ChannelClose(channel_id=channel.id, error=owner.sent[1].error)]
    assert owner.sent[1].error.code == "gone"


async def test_a_peer_leaving_ends_its_channels_and_a_closed_channel_is_forgotten() -> None:
    table = ChannelTable()
    a, b = Peer(), Peer()
    ca, cb, cb2 = table.open_inbound(a), table.open_inbound(b), table.open_inbound(b)
    assert len(table) == 3 and len({ca.id, cb.id, cb2.id}) == 3
    outbound = table.open_outbound(a, empty=True)
    assert outbound.direction == "read" and outbound.eof and len(table) == 3  # nothing to receive on it
    table.peer_closed(b)
    assert len(table) == 1
    with trio.fail_after(1), pytest.raises(trio.EndOfChannel):
        await cb.inbox.get()
    ca.close()
    assert len(table) == 0
    table.deliver(a, Chunk(ca.id, b"late"))  # dropped
    assert len(ca.inbox) == 0
