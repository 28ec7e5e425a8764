"""Streamed bodies on the worker side: :class:`ChannelReader` and :class:`ChannelWriter`.

A channel is identified by an id that the supervisor allocates and passes inside a call's
payload (``{"channel_id": 7, "direction": "read"}``). Its bytes travel as binary chunk frames
on the worker's own socket, never base64 inside JSON.

The writer is flow-controlled: it may send :data:`CHANNEL_WINDOW` bytes ahead of what the
reader (the supervisor's HTTP front) has passed on, and ``await write()`` waits for more window,
so a handler streaming a large file runs at the client's pace with bounded memory everywhere.
If the reader goes away (the HTTP client disconnected), the next write raises
:class:`ChannelClosed`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from ..errors import EngineError
from ..protocol import CHANNEL_CHUNK, CHANNEL_WINDOW, ChannelClose, ChannelControl, Chunk, ErrorBody, Message

log = logging.getLogger(__name__)


class ChannelClosed(EngineError):
    """The other end of the channel is gone (e.g. the HTTP client disconnected)."""

    code = "channel_closed"


class ChannelReader:
    """The receiving end of a streamed body: ``async for chunk in reader`` or ``await reader.read_all()``."""

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self._chunks: deque[bytes] = deque()
        self._changed = trio.Event()
        self._eof = False
        self._error: ErrorBody | None = None

    # fed by the connection loop
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._changed.set()

    def _end(self, error: ErrorBody | None) -> None:
        self._eof = True
        self._error = error
        self._changed.set()

    async def read(self) -> bytes:
        """The next chunk; ``b""`` at the end of the body."""
        while not self._chunks:
            if self._eof:
                if self._error is not None:
                    raise ChannelClosed(self._error.message, code=self._error.code)
                return b""
            self._changed = trio.Event()
            await self._changed.wait()
        return self._chunks.popleft()

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    async def close_async(self) -> None:
        """Stop reading (what is still to come is dropped)."""
        self._chunks.clear()
        self._eof = True


class ChannelWriter:
    """The sending end of a streamed body (the ``response.writer`` of an ``@http`` handler)."""

    def __init__(self, channel_id: int, send: Callable[[Message | Chunk], None],
                 spawn: Callable[..., None]) -> None:
        self.channel_id = channel_id
        self._send = send
        self._spawn = spawn  # starts a task on the worker's loop (fire-and-forget forms)
        self._window = CHANNEL_WINDOW
        self._granted = trio.Event()
        self._closed = False
        self._peer_error: ErrorBody | None = None
        self._lock = trio.StrictFIFOLock()
        # Fire-and-forget operations, run in order by one task; awaited operations wait until the
        # queue is empty, so both kinds keep the order in which the handler issued them.
        self._queued: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._drained: trio.Event | None = None  # set while a drain task runs
        #: True once anything (status, headers, bytes) was sent or queued
        self.touched = False

    @property
    def closed(self) -> bool:
        return self._closed

    # fed by the connection loop
    def _grant(self, size: int) -> None:
        self._window += size
        self._granted.set()

    def _peer_closed(self, error: ErrorBody | None) -> None:
        if self._peer_error is not None:  # the first reason is the real one
            return
        self._peer_error = error or ErrorBody(code="channel_closed", message="the reader closed the channel")
        self._granted.set()

    def _check(self) -> None:
        if self._peer_error is not None:
            raise ChannelClosed(self._peer_error.message, code=self._peer_error.code)
        if self._closed:
            raise ChannelClosed("write after close", code="channel_closed")

    # fire-and-forget plumbing
    def _enqueue(self, afn: Callable[..., Any], *args: Any) -> None:
        self._queued.append((afn, args))
        if self._drained is None:
            self._drained = trio.Event()
            self._spawn(self._drain)

    async def _drain(self) -> None:
        assert self._drained is not None
        try:
            while self._queued:
                afn, args = self._queued.popleft()
                try:
                    await afn(*args)
                except Exception as exc:  # nobody awaits these: log, never crash the worker's loop
                    log.debug("fire-and-forget %s on channel %d failed: %r", afn.__name__, self.channel_id, exc)
        finally:
            self._drained.set()
            self._drained = None

    async def _after_queued(self) -> None:
        """Wait until the fire-and-forget operations issued so far have run."""
        while self._drained is not None:
            await self._drained.wait()

    async def write(self, data: bytes | bytearray | memoryview | str) -> None:
        """Send ``data`` (str is UTF-8 encoded), waiting for window as needed."""
        await self._after_queued()
        await self._write(data)

    async def _write(self, data: bytes | bytearray | memoryview | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        view = memoryview(data)
        async with self._lock:
            for start in range(0, len(view), CHANNEL_CHUNK):
                self._check()
                while self._window <= 0:
                    self._granted = trio.Event()
                    await self._granted.wait()
                    self._check()
                piece = bytes(view[start : start + CHANNEL_CHUNK])
                self._window -= len(piece)
                self.touched = True
                self._send(Chunk(self.channel_id, piece))
                # let the connection's writer task put it on the socket now, even if the
                # handler blocks the loop next (the seed's SSE example calls time.sleep)
                await trio.lowlevel.checkpoint()

    async def send_message_async(self, message: str | dict[str, Any]) -> None:
        """Send a JSON control item (``{"type": "set_status", ...}``) on the channel."""
        await self._after_queued()
        await self._send_message(message)

    async def _send_message(self, message: str | dict[str, Any]) -> None:
        import orjson

        data = orjson.loads(message) if isinstance(message, str) else message
        async with self._lock:
            self._check()
            self.touched = True
            self._send(ChannelControl(channel_id=self.channel_id, data=data))

    def send_message(self, message: str | dict[str, Any]) -> None:
        """Fire-and-forget form of :meth:`send_message_async` (ordered with other writes)."""
        self.touched = True
        self._enqueue(self._send_message, message)

    async def close_async(self, error: ErrorBody | None = None) -> None:
        """End the body (idempotent). With ``error`` the reader aborts instead."""
        await self._after_queued()
        await self._close(error)

    async def _close(self, error: ErrorBody | None = None) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._peer_error is None:
                self._send(ChannelClose(channel_id=self.channel_id, error=error))

    def close(self) -> None:
        """Fire-and-forget form of :meth:`close_async`."""
        self._enqueue(self._close)


class WritableStream:
    """``response.stream``: synchronous, fire-and-forget writes (ordered, flow-controlled)."""

    def __init__(self, writer: ChannelWriter) -> None:
        self.writer = writer

    def write(self, data: bytes | str) -> None:
        self.writer.touched = True
        self.writer._enqueue(self.writer._write, data)

    def end(self, data: bytes | str | None = None) -> None:
        if data is not None:
            self.write(data)
        self.writer.close()
