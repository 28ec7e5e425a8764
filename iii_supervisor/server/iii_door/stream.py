"""One WebSocket-door worker connection, with the interface :class:`~iii_supervisor.session.Session`
uses on a :class:`~iii_supervisor.transport.FramedStream` (``send_nowait``, ``batches``,
``run_writer``, ``closed``, ``pending_bytes``, ``aclose``, ``send_error_and_close``).

Reading is trio-websocket's (``get_message``: whole messages, at most ``max_message_size``; a
larger one is closed with 1009 by trio-websocket itself). Writing goes through the connection's
:class:`~iii_supervisor.server.ws.FrameSink`: ``send_nowait`` never blocks, and the queue is
bounded — over its limit the connection is closed with 1008 (the peer does not read). The
invoker refuses calls to a peer whose queue is over ``supervisor.max_queued_bytes`` before that
(``worker_overloaded``), as on the Unix door.

Channel references in payloads are rewritten both ways with the door's ChannelEndpoints; channel
frames the engine sends to this worker are handed to it (they travel on channel sockets).
Our protocol's ``ping`` becomes a WebSocket ping; its pong is reported to ``on_pong``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ...errors import ConnectionLost, LocalProtocolError, ProtocolError, RemoteProtocolError
from ...protocol import (
    ChannelClose,
    ChannelControl,
    ChannelWindow,
    Chunk,
    Event,
    InvocationResult,
    InvokeFunction,
    Message,
    Ping,
)
from ...protocol.channels import ChannelRef
from ..ws import FrameSink, encode_text_frame
from . import wire
from .channels import ChannelEndpoints

log = logging.getLogger(__name__)

_CHANNEL_FRAMES = (Chunk, ChannelClose, ChannelControl, ChannelWindow)


class WsStream:
    def __init__(self, conn: WebSocketConnection, sink: FrameSink, endpoints: ChannelEndpoints, *,
                 max_message_size: int, ping_interval: float, ping_timeout: float, close_timeout: float,
                 owner_of: Callable[[str], str] | None = None) -> None:
        self.conn = conn
        self.sink = sink
        self.endpoints = endpoints
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.owner_of = owner_of
        #: the session this stream serves (channel ends are minted for it); set by the door
        self.session: Any = None
        #: called when a pong answers a ping the session asked for
        self.on_pong: Callable[[], None] | None = None
        self._ping_now = trio.Event()

    # --- the FramedStream interface ---------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self.sink.buffer.size

    @property
    def closed(self) -> bool:
        return self.sink.closing is not None or self.sink.dead

    def send_nowait(self, event: Event) -> None:
        if self.closed:
            raise ConnectionLost("connection is closed")
        if isinstance(event, Ping):
            self._ping_now.set()
            return
        if isinstance(event, _CHANNEL_FRAMES):
            self._channel_frame(event)
            return
        try:
            data = wire.encode(event, owner_of=self.owner_of)
            if data is None:
                return
            if (type(event) is InvokeFunction or type(event) is InvocationResult) and wire.has_refs(data):
                data = self._with_sdk_refs(event, data)
        except TypeError as exc:  # orjson: not JSON, or nested deeper than it encodes (a local failure)
            raise LocalProtocolError(f"cannot encode {type(event).__name__} as JSON: {exc}") from None
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        """Queue one encoded JSON message as a text frame."""
        if len(data) > self.max_message_size:
            raise LocalProtocolError(f"a {len(data)}-byte message exceeds the door's max_message_size of "
                                     f"{self.max_message_size} bytes")
        if not self.sink.send(encode_text_frame(data.decode())):
            log.debug("iii door: frame dropped, the connection is closing")

    def _channel_frame(self, event: Any) -> None:
        try:
            consumed = self.endpoints.outgoing(self.session, event)
        except Exception:  # a bug there fails this frame, never the caller
            log.exception("iii door: a channel frame for %s could not be passed on", self.session)
            return
        if not consumed:
            log.debug("iii door: %s for an unknown channel of %s dropped", type(event).__name__, self.session)

    def _with_sdk_refs(self, event: InvokeFunction | InvocationResult, data: bytes) -> bytes:
        """Re-encode ``event`` with our channel references in the SDK's shape."""

        def convert(value: dict[str, Any]) -> dict[str, Any] | None:
            ref = ChannelRef.parse(value)
            if ref is None:
                return None
            return self.endpoints.to_wire(self.session, ref)

        try:
            if type(event) is InvokeFunction:
                payload = wire.map_refs(event.data, convert)
                changed: Message = attrs.evolve(event, data=payload) if payload is not event.data else event
            else:
                assert type(event) is InvocationResult
                payload = wire.map_refs(event.result, convert)
                changed = attrs.evolve(event, result=payload) if payload is not event.result else event
        except Exception as exc:  # (a local failure: fails this call, never the connection)
            raise LocalProtocolError(f"cannot pass a channel to {self.session}: {type(exc).__name__}: {exc}") from None
        if changed is event:
            return data
        encoded = wire.encode(changed)  # (a TypeError here is the caller's to translate)
        assert encoded is not None
        return encoded

    async def run_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.sink.run)
            await nursery.start(self._keepalive)
            task_status.started()

    async def batches(self) -> AsyncIterator[list[Event]]:
        conn = self.conn
        while True:
            try:
                message = await conn.get_message()
            except ConnectionClosed as exc:
                reason = exc.reason
                if reason is not None and reason.code == wire.CLOSE_TOO_BIG:
                    from ...session import PROTOCOL_WARNINGS

                    PROTOCOL_WARNINGS.warning("iii door protocol errors",
                                              "%s: message over iii.max_message_size (%d bytes): closed with 1009",
                                              self.session, self.max_message_size)
                return
            if isinstance(message, bytes):
                raise RemoteProtocolError("binary frames are not part of the iii worker protocol (send JSON text "
                                          "frames; telemetry goes to /otel)", code="binary_frame")
            event = wire.decode(message)
            if event is None:
                continue
            if (type(event) is InvokeFunction or type(event) is InvocationResult) and '"access_key"' in message:
                event = self._with_our_refs(event)
            yield [event]  # type: ignore[list-item]  # (a Reattach is the door session's)

    def _with_our_refs(self, event: Message) -> Message:
        def convert(value: dict[str, Any]) -> dict[str, Any] | None:
            if not wire.is_sdk_ref(value):
                return None
            try:
                ref = self.endpoints.from_wire(self.session, value)
            except Exception:  # a bug there leaves the reference as sent, never ends the connection
                log.exception("iii door: a channel reference from %s could not be read", self.session)
                return None
            return None if ref is None else ref.to_wire()

        if type(event) is InvokeFunction:
            payload = wire.map_refs(event.data, convert)
            return attrs.evolve(event, data=payload) if payload is not event.data else event
        assert type(event) is InvocationResult
        payload = wire.map_refs(event.result, convert)
        return attrs.evolve(event, result=payload) if payload is not event.result else event

    async def aclose(self) -> None:
        sink = self.sink
        if sink.closing is None and not sink.dead:
            with trio.move_on_after(self.close_timeout):
                try:
                    await self.conn.aclose()
                except Exception:  # noqa: BLE001 - closing a broken connection: nothing to tell
                    pass
        else:
            with trio.move_on_after(3 * self.close_timeout):
                await sink.cut.wait()
        sink._cut()
        await trio.lowlevel.checkpoint()

    async def send_error_and_close(self, error: ProtocolError | Message, *, timeout: float = 1.0) -> None:
        """Close with the WebSocket code for ``error`` (1002 / 1003 / 1009) and its message."""
        if isinstance(error, ProtocolError):
            code, message = wire.close_code(error.code), error.message
        else:
            code, message = wire.CLOSE_PROTOCOL_ERROR, "protocol error"
        self.sink.close(code, wire.close_reason(message))
        with trio.move_on_after(3 * self.close_timeout):
            await self.sink.cut.wait()
        self.sink._cut()

    # --- keep-alive ---------------------------------------------------------------------------------

    async def _keepalive(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A WebSocket ping every ``ping_interval`` (and whenever the session asks: our ``ping``);
        no pong within ``ping_timeout`` closes the connection with 1001."""
        task_status.started()
        while not self.closed:
            with trio.move_on_after(self.ping_interval):
                await self._ping_now.wait()
            self._ping_now = trio.Event()
            with trio.move_on_after(self.ping_timeout) as scope:
                try:
                    await self.conn.ping()
                except Exception:  # noqa: BLE001 - closed or closing: the reader sees it
                    return
            if scope.cancelled_caught:
                log.info("iii door: %s sent no pong within %gs: closing it", self.session, self.ping_timeout)
                self.sink.close(1001, "no pong within ping_timeout")
                return
            if self.on_pong is not None:
                self.on_pong()
