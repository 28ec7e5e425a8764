"""Channel references: how a call's payload names a streamed body. Sans-IO.

A channel carries binary chunk frames (and ``channelcontrol`` / ``channelclose`` /
``channelwindow`` messages) on the worker's own connection. The supervisor allocates its id and
puts a reference in the call's payload, e.g. ``{"channel_id": 7, "direction": "read"}``:
``direction`` is the *worker's* side — ``read`` means the supervisor writes and the worker reads
(a request body), ``write`` means the worker writes (a response). ``eof`` marks a read channel on
which nothing will be sent (an empty body), so the reader needs no frame to start at its end.

The reference is built with :meth:`ChannelRef.to_wire` and parsed with :meth:`ChannelRef.parse`,
here and nowhere else.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

Direction = Literal["read", "write"]


@attrs.define(slots=True)  # a value, but not frozen: two are built per HTTP request (frozen costs ~3x)
class ChannelRef:
    channel_id: int
    direction: Direction
    eof: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"channel_id": self.channel_id, "direction": self.direction}
        if self.eof:
            wire["eof"] = True
        return wire

    @classmethod
    def parse(cls, value: Any, direction: Direction | None = None) -> ChannelRef | None:
        """The reference in ``value``, or None if it is not one (of ``direction``, if given)."""
        if type(value) is not dict:
            return None
        channel_id, kind = value.get("channel_id"), value.get("direction")
        if type(channel_id) is not int or kind not in ("read", "write"):
            return None
        if direction is not None and kind != direction:
            return None
        return cls(channel_id, kind, value.get("eof") is True)
