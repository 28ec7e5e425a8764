"""Length-prefixed framing: a 4-byte big-endian unsigned length N, then N bytes.

Sans-IO in the style of h11/wsproto: feed bytes in with :meth:`FrameDecoder.feed`, take whole
frame payloads out with :meth:`FrameDecoder.next_frame`. The length is checked against the
maximum *before* any payload is buffered, so a hostile peer cannot make us allocate 4 GiB.

A payload whose first byte is ``{`` is a JSON control message; any other first byte is a
binary frame kind (see :class:`.codec.Chunk`), so body bytes never travel base64-encoded inside JSON.
"""

from __future__ import annotations

import struct

from ..errors import FrameTooLarge, RemoteProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
#: Default upper bound for one frame's payload (configurable per connection).
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
#: The largest length the 4-byte prefix can express.
ABSOLUTE_MAX_FRAME_SIZE = 2**32 - 1


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder of length-prefixed frames.

    Bytes are appended to one ``bytearray`` and consumed from a read offset; the buffer is
    compacted only when the offset has passed half of it, so decoding many small frames from
    one large read is linear, not quadratic.
    """

    __slots__ = ("_buf", "_pos", "max_frame_size", "_closed")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= ABSOLUTE_MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be in 1..{ABSOLUTE_MAX_FRAME_SIZE}, got {max_frame_size}")
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0
        self._closed = False

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        if self._closed:
            raise RemoteProtocolError("data fed after end of stream")
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def feed_eof(self) -> None:
        """Declare the end of the stream (after draining :meth:`next_frame`); raises if a frame was cut."""
        self._closed = True
        if self.buffered:
            raise RemoteProtocolError(f"connection closed in the middle of a frame ({self.buffered} bytes pending)")

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> bytes | None:
        """Return the next complete payload, or ``None`` if more bytes are needed.

        Raises :class:`FrameTooLarge` as soon as a header announces more than the maximum.
        """
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self.max_frame_size:
            raise FrameTooLarge(
                f"frame of {length} bytes exceeds the maximum frame size of {self.max_frame_size} bytes"
            )
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + HEADER_SIZE : end])
        self._pos = end
        if end == len(buf):
            buf.clear()
            self._pos = 0
        return payload
