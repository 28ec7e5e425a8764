"""Channels of WebSocket-door workers: the reference's data path ``/ws/channels/{id}?key=&dir=``.

A worker on our Unix socket carries channel frames (chunks, ``channelcontrol``, ``channelclose``,
``channelwindow``) on its own connection. A worker written with the official SDK opens one
WebSocket per channel end instead, named by a reference ``{channel_id: str, access_key,
direction}``. This module is the bridge, for every door session of the engine:

- :meth:`ChannelEndpoints.to_wire` (or :meth:`~ChannelEndpoints.wire_data` for a whole payload)
  turns one of our :class:`~iii_supervisor.protocol.channels.ChannelRef` (an int id of the
  engine's :class:`~iii_supervisor.channels.ChannelTable`) into such a reference, minting a
  random access key: an *end*, bound to the session that is to use it;
- :meth:`ChannelEndpoints.serve` serves the socket the SDK opens for an end (id, key and
  direction checked, each end taken once). ``dir=write`` (the worker writes, e.g. an HTTP
  response): text frames become ``channelcontrol`` (``set_status``/``set_headers``), binary
  frames chunks, the close ``channelclose``, all delivered to the table *as the owning session*
  (so its ownership check holds). ``dir=read`` (the worker reads, e.g. a request body): what
  the engine sends (:meth:`~ChannelEndpoints.outgoing`) is forwarded as frames of ≤ 1 MiB,
  then a close;
- :meth:`ChannelEndpoints.outgoing` takes the channel messages the engine sends to a door
  session (they never travel on its main socket);
- ``engine::channels::create {buffer_size?}`` makes a *pipe* between two sockets (worker-to-
  worker streaming), as in the reference: ``{writer, reader}`` references.

Memory stays bounded: a write socket is read only while the engine reader has granted window
(``channelwindow``), so a slow HTTP client slows the handler's socket (TCP backpressure); a read
end buffers what the engine sent before its socket connected up to :data:`READ_BUFFER_LIMIT`
(:data:`UNTAKEN_BUFFER_LIMIT` over all untaken ends); a pipe holds ``buffer_size`` frames and
:data:`PIPE_BYTES` at most; a frame over :data:`MAX_CHANNEL_MESSAGE` closes its socket (1009);
ends not connected within :data:`UNTAKEN_TTL` are swept, and so are an HTTP call's ends as soon
as the call is over.
"""

from __future__ import annotations

import base64
import hmac
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Iterator
from typing import Any, Literal

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ...channels import ChannelTable
from ...errors import InvocationError
from ...protocol import CHANNEL_WINDOW, ChannelClose, ChannelControl, ChannelWindow, Chunk, ErrorBody
from ...protocol.channels import ChannelRef
from ...registry import Registry
from ...session import PROTOCOL_WARNINGS
from ...tracing import call_context

log = logging.getLogger(__name__)

#: Largest frame on a channel socket, both ways (the SDK writes binary frames of ≤ 64 KiB, and
#: its reader sockets keep websockets' default limit of 1 MiB).
MAX_CHANNEL_MESSAGE = 1024 * 1024
#: Bytes a read end buffers for a reader that is slow or not connected yet (beyond: the end fails).
READ_BUFFER_LIMIT = 16 * 1024 * 1024
#: Bytes buffered in all read ends whose socket never connected (beyond: the oldest fail).
UNTAKEN_BUFFER_LIMIT = 64 * 1024 * 1024
#: Seconds an end may wait for its socket before it is swept (the reference: 5 minutes).
UNTAKEN_TTL = 300.0
#: Seconds between two sweeps (they run lazily, when an end is minted).
SWEEP_INTERVAL = 1.0
#: ``engine::channels::create``: frames a pipe buffers (``buffer_size``), by default and at most.
DEFAULT_PIPE_FRAMES, MAX_PIPE_FRAMES = 64, 1024
#: Bytes a pipe buffers at most (a frame is always admitted into an empty pipe).
PIPE_BYTES = 1024 * 1024
#: Ends (untaken or in use) at most; minting more sweeps the oldest untaken ones.
MAX_ENDS = 50_000

# close codes: 1000 normal end, 1001 the other side went away, 1003 a frame this end cannot take,
# 1008 unknown id / wrong key / taken end, 1009 frame too large, 1011 the engine side failed
_NORMAL, _GOING_AWAY, _UNSUPPORTED, _POLICY, _TOO_BIG, _FAILED = 1000, 1001, 1003, 1008, 1009, 1011

Direction = Literal["read", "write"]


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode("utf-8", "ignore") + "…"


def _clean(exc: ConnectionClosed) -> tuple[bool, int | None]:
    """Did the peer close normally (1000, 1001, no code)? And with which code."""
    code = exc.reason.code if exc.reason is not None else None
    return code in (_NORMAL, _GOING_AWAY, 1005), code


@attrs.define(eq=False)
class _Watched:
    """Something a task waits on until it changes."""

    #: set (and dropped) on a change; made only when a task waits (most ends never do)
    _changed: trio.Event | None = attrs.field(default=None, kw_only=True)

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_change(self) -> None:
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()


@attrs.define(eq=False)
class _Pipe(_Watched):
    """``engine::channels::create``: frames from the writer socket to the reader socket."""

    frames: int
    creator: str
    items: deque[str | bytes] = attrs.Factory(deque)
    size: int = 0
    writer_done: bool = False
    error: str | None = None

    def full(self) -> bool:
        return bool(self.items) and (len(self.items) >= self.frames or self.size >= PIPE_BYTES)


@attrs.define(eq=False)
class _End(_Watched):
    """One end of a channel, as a door worker sees it."""

    wire_id: str
    key: str
    direction: Direction
    created: float
    #: the session the end was minted for (None: a pipe end, anyone holding the key may take it)
    session: Any = None
    #: our ChannelTable id (HTTP front channels) or the pipe
    channel_id: int | None = None
    pipe: _Pipe | None = None
    #: ends minted in one payload: when the call is over, its untaken ends go with it
    group: list[_End] | None = None
    taken: bool = False
    gone: bool = False
    #: write end: window granted by the engine reader; read end: frames waiting for the socket
    window: int = CHANNEL_WINDOW
    frames: deque[str | bytes] = attrs.Factory(deque)
    size: int = 0
    #: read end: the engine wrote its last frame; write end: the engine reader gave up
    ended: bool = False
    error: ErrorBody | None = None
    scope: trio.CancelScope | None = None

    def wire(self) -> dict[str, Any]:
        return {"channel_id": self.wire_id, "access_key": self.key, "direction": self.direction}


class ChannelEndpoints:
    """Every WebSocket-door channel end, engine-wide: ``/ws/channels/{id}?key=&dir=``."""

    def __init__(self, table: ChannelTable, registry: Registry) -> None:
        self.table = table
        self.registry = registry
        self._ends: dict[str, _End] = {}
        #: ends whose socket has not connected yet, oldest first (swept in this order)
        self._untaken: dict[str, _End] = {}
        self._untaken_bytes = 0
        #: ChannelTable id → the end serving it
        self._by_channel: dict[int, _End] = {}
        self._last_sweep = -float("inf")

    # --- minting --------------------------------------------------------------------------------

    def install(self) -> None:
        """Register the ``engine::channels::create`` built-in."""
        self.registry.add_builtin("engine::channels::create", self._create,
                                  "A pipe between two WebSocket-door workers: {buffer_size?: 1..1024} → "
                                  "{writer, reader} channel references")

    def to_wire(self, session: Any, ref: ChannelRef) -> dict[str, Any]:
        """The reference SDK's shape ``{channel_id: str, access_key, direction}`` for a channel
        of ours that ``session`` (a WebSocket-door worker) is to use; mints the access key."""
        return self._mint_for(session, ref, None).wire()

    def wire_data(self, session: Any, data: Any) -> Any:
        """``data`` (a call's payload) with each of our channel references replaced by
        :meth:`to_wire`'s. Prefer it to per-reference calls: the ends of one call are swept
        together once the call is over (an unread request body does not wait 5 minutes)."""
        return self._replace(session, data, [], 0)

    def _replace(self, session: Any, value: Any, group: list[_End], depth: int) -> Any:
        if type(value) is dict:
            ref = ChannelRef.parse(value)
            if ref is not None:
                return self._mint_for(session, ref, group).wire()
            if depth < 32:
                return {k: self._replace(session, v, group, depth + 1) for k, v in value.items()}
        elif type(value) is list and depth < 32:
            return [self._replace(session, v, group, depth + 1) for v in value]
        return value

    def _mint_for(self, session: Any, ref: ChannelRef, group: list[_End] | None) -> _End:
        end = self._mint(ref.direction, session=session, channel_id=ref.channel_id, group=group)
        if ref.direction == "read" and ref.eof:
            end.ended = True
        channel = self.table.get(ref.channel_id) if ref.direction == "write" else None
        old = self._by_channel.get(ref.channel_id)
        # Channel ids are small sequential ints, and any peer may put one in a payload (to itself
        # too): a reference may replace only this session's own end, or be the one of the channel's
        # real writer; otherwise the end is inert (the engine's frames never reach it, and the
        # table refuses its writes), rather than cutting another worker's request off. An id not
        # issued yet is forged (the real owner's end is minted in the step its id is issued).
        if not self.table.issued(ref.channel_id) or (
                old is not None and old.session is not session and (channel is None or channel.peer is not session)):
            end.channel_id = None
            end.ended, end.error = True, ErrorBody(code="channel_not_yours", message=(
                f"channel {ref.channel_id} is another worker's"))
            return end
        if old is not None:  # the same channel sent twice: the newer reference serves it
            self._drop(old)
        self._by_channel[ref.channel_id] = end
        if channel is not None and channel.peer is session:
            channel.apart = True  # its frames come on a socket of their own, maybe after the result
        if group is None:
            self._pair(end)
        return end

    def _pair(self, end: _End) -> None:
        """Ends minted one by one: the HTTP front opens a call's response channel and then its
        request body's, one after the other (ids N and N+1, same worker), so such a pair is one
        call and is swept together. Anything else waits for :data:`UNTAKEN_TTL`."""
        assert end.channel_id is not None
        other_id = end.channel_id + 1 if end.direction == "write" else end.channel_id - 1
        other = self._by_channel.get(other_id)
        if (other is not None and other.session is end.session and other.group is None
                and other.direction != end.direction):
            end.group = other.group = [end, other]

    def _mint(self, direction: Direction, **fields: Any) -> _End:
        now = trio.current_time()
        if now - self._last_sweep >= SWEEP_INTERVAL:
            self._sweep(now)
        if len(self._ends) >= MAX_ENDS:
            self._evict(len(self._ends) - MAX_ENDS + 1)
        raw = secrets.token_bytes(34)  # one read of the system's random source for both
        end = _End(raw[:16].hex(), base64.urlsafe_b64encode(raw[16:]).decode(), direction, now, **fields)
        if end.group is not None:
            end.group.append(end)
        self._ends[end.wire_id] = end
        self._untaken[end.wire_id] = end
        return end

    def from_wire(self, session: Any, value: Any) -> ChannelRef | None:
        """Our ChannelRef for a reference-shaped dict a WebSocket-door worker sent, or None.

        Only a reference to an HTTP-front end minted for ``session`` itself comes back (with its
        key); anything else — a pipe's reference, another worker's — stays a plain dict."""
        if type(value) is not dict or not isinstance(value.get("channel_id"), str):
            return None
        end = self._ends.get(value["channel_id"])
        key = value.get("access_key")
        if (end is None or end.session is not session or end.channel_id is None or not isinstance(key, str)
                or not hmac.compare_digest(end.key.encode(), key.encode()) or value.get("direction") != end.direction):
            return None
        return ChannelRef(end.channel_id, end.direction, eof=end.direction == "read" and end.ended and not end.frames)

    # --- engine::channels::create -----------------------------------------------------------------

    async def _create(self, data: Any) -> dict[str, Any]:
        size = data.get("buffer_size") if isinstance(data, dict) else None
        if size is None:
            size = DEFAULT_PIPE_FRAMES
        elif isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PIPE_FRAMES:
            raise InvocationError(f"engine::channels::create: buffer_size must be an integer in 1..{MAX_PIPE_FRAMES}, "
                                  f"got {size!r:.80}", code="invalid_argument")
        # the engine knows who is calling; a payload field naming a worker would be the caller's say-so
        pipe = _Pipe(size, call_context().caller)
        writer = self._mint("write", pipe=pipe)
        reader = self._mint("read", pipe=pipe)
        writer.group = reader.group = [writer, reader]
        return {"writer": writer.wire(), "reader": reader.wire()}

    # --- the engine's channel messages --------------------------------------------------------------

    def outgoing(self, session: Any, msg: Any) -> bool:
        """Take a channel message (Chunk, ChannelClose, ChannelWindow, ChannelControl) the engine
        sends to ``session``: True if consumed (it belongs on a channel socket, not the main one)."""
        kind = type(msg)
        if kind not in (Chunk, ChannelClose, ChannelWindow, ChannelControl):
            return False
        end = self._by_channel.get(msg.channel_id)
        if end is None or end.session is not session or end.gone:
            return True  # a channel that was never handed to this worker, or is over: nobody to tell
        if end.direction == "read":  # the engine writes, the worker reads
            if end.ended:
                return True
            if kind is Chunk:
                data = msg.data
                for start in range(0, len(data), MAX_CHANNEL_MESSAGE):
                    self._buffer(end, data[start:start + MAX_CHANNEL_MESSAGE])
            elif kind is ChannelControl:
                self._buffer(end, orjson.dumps(msg.data).decode())
            elif kind is ChannelClose:
                end.ended, end.error = True, msg.error
            end.notify()
        elif kind is ChannelWindow:  # the worker writes: the engine reader grants more
            end.window += msg.size
            end.notify()
        elif kind is ChannelClose:  # the engine reader gave up: the worker's next write must fail
            end.ended, end.error = True, msg.error or ErrorBody(code="channel_closed", message="the reader closed")
            if end.scope is not None:
                end.scope.cancel()
            elif not end.taken:
                self._drop(end)
        return True

    def _buffer(self, end: _End, frame: str | bytes) -> None:
        if end.size + len(frame) > READ_BUFFER_LIMIT:
            self._fail(end, f"more than {READ_BUFFER_LIMIT} bytes waiting for the reader")
            return
        end.frames.append(frame)
        end.size += len(frame)
        if not end.taken:
            self._untaken_bytes += len(frame)
            while self._untaken_bytes > UNTAKEN_BUFFER_LIMIT:
                oldest = next((e for e in self._untaken.values() if e.size), None)
                if oldest is None:
                    break
                self._fail(oldest, f"the reader did not connect while more than {UNTAKEN_BUFFER_LIMIT} "
                                   "bytes waited for untaken channels")

    def _fail(self, end: _End, message: str) -> None:
        """The read end cannot be served: its buffer goes, its reader gets an error close."""
        PROTOCOL_WARNINGS.warning("iii door channel overflow", "iii door: channel %s: %s", end.wire_id, message)
        if not end.taken:
            self._untaken_bytes -= end.size
        end.frames.clear()
        end.size = 0
        end.ended, end.error = True, ErrorBody(code="channel_overflow", message=message)
        end.notify()

    # --- lifetime -------------------------------------------------------------------------------------

    def _drop(self, end: _End) -> None:
        """Forget ``end``: it can no longer be connected; a socket serving it ends."""
        if end.gone:
            return
        end.gone = True
        self._ends.pop(end.wire_id, None)
        if self._untaken.pop(end.wire_id, None) is not None:
            self._untaken_bytes -= end.size
        if end.channel_id is not None and self._by_channel.get(end.channel_id) is end:
            del self._by_channel[end.channel_id]
        if end.pipe is not None and end.direction == "write" and not end.pipe.writer_done:
            end.pipe.writer_done = True  # the reader gets what was written, then an error close
            end.pipe.error = end.pipe.error or "the writer's end was dropped"
            end.pipe.notify()
        end.frames.clear()
        end.size = 0
        if end.scope is not None:
            end.scope.cancel()
        end.notify()

    def _sweep(self, now: float) -> None:
        """Drop untaken ends that waited too long, and those of HTTP calls that are over."""
        self._last_sweep = now
        for end in list(self._untaken.values()):
            if not end.gone and (now - end.created >= UNTAKEN_TTL or self._call_over(end)):
                self._drop(end)

    def _evict(self, count: int) -> None:
        """At :data:`MAX_ENDS`: drop the ``count`` oldest untaken ends, and look at no more (a
        full sweep per mint made a caller of ``engine::channels::create`` at the cap hold the
        event loop ~28 ms per call, measured with 50,000 ends)."""
        for end in list(itertools.islice(self._untaken.values(), count)):
            self._drop(end)

    def _call_over(self, end: _End) -> bool:
        """The HTTP front closed the response channel of ``end``'s call (or of ``end`` itself):
        nobody will read what the call writes, and its handler is done with the request body."""
        for e in end.group or (end,):
            if e.direction == "write" and e.channel_id is not None and (e.gone or e.channel_id not in self.table):
                return True
        return False

    def session_closed(self, session: Any) -> None:
        """``session`` is gone: drop its channel ends (and the pipes it created that nobody took)."""
        name, worker_id = getattr(session, "name", None), getattr(session, "worker_id", None)
        for end in list(self._ends.values()):
            if end.session is session:
                self._drop(end)
            elif end.pipe is not None and end.pipe.creator in (name, worker_id):
                if not end.taken:
                    self._drop(end)
                elif end.direction == "write":  # the writer stops; the reader drains, then ends
                    self._drop(end)

    def __len__(self) -> int:
        return len(self._ends)

    # --- the sockets --------------------------------------------------------------------------------

    def admits(self, channel_id: str, key: str, direction: str) -> bool:
        """Would :meth:`serve` take this socket? (So the door may refuse it before the upgrade.)"""
        return self._lookup(channel_id, key, direction) is not None

    def _lookup(self, channel_id: str, key: str, direction: str) -> _End | None:
        end = self._ends.get(channel_id)
        if end is None or end.taken or end.direction != direction:
            return None
        if end.pipe is None and end.direction == "write" and end.channel_id not in self.table:
            return None  # the HTTP front is done with that response
        if not hmac.compare_digest(end.key.encode(), key.encode("utf-8", "replace")):
            return None
        return end

    async def serve(self, ws: WebSocketConnection, channel_id: str, key: str, direction: str) -> None:
        """Serve one channel socket until either side closes (the door checked nothing but the path)."""
        end = self._lookup(channel_id, key, direction)
        if end is None:
            await ws.aclose(_POLICY, "unknown channel, wrong key or direction, or channel already taken")
            return
        end.taken = True
        if self._untaken.pop(end.wire_id, None) is not None:
            self._untaken_bytes -= end.size
        try:
            if end.pipe is not None:
                await self._serve_pipe(ws, end, end.pipe)
            elif direction == "write":
                await self._serve_write(ws, end)
            else:
                await self._serve_read(ws, end)
        finally:
            self._drop(end)

    async def _serve_write(self, ws: WebSocketConnection, end: _End) -> None:
        """The worker writes into one of our ChannelTable channels, as its session."""
        assert end.channel_id is not None
        deliver, peer, cid = self.table.deliver, end.session, end.channel_id
        close: ChannelClose | None = ChannelClose(channel_id=cid, error=ErrorBody(
            code="channel_aborted", message="the worker's channel socket ended abnormally"))
        end.scope = trio.CancelScope()
        channel = self.table.get(cid)
        if channel is not None:
            channel.writing = True
        try:
            with end.scope:
                while True:
                    while end.window <= 0:
                        await end.wait_change()
                    try:
                        message = await ws.get_message()
                    except ConnectionClosed as exc:
                        clean, code = _clean(exc)
                        if clean:
                            close = ChannelClose(channel_id=cid)
                        else:
                            close = ChannelClose(channel_id=cid, error=ErrorBody(
                                code="channel_aborted", message=f"the worker's channel socket closed with {code}"))
                        return
                    if len(message) > MAX_CHANNEL_MESSAGE:
                        await ws.aclose(_TOO_BIG, f"channel frames are at most {MAX_CHANNEL_MESSAGE} bytes")
                        return
                    if isinstance(message, bytes):
                        end.window -= len(message)
                        deliver(peer, Chunk(cid, message))
                        continue
                    try:
                        control = orjson.loads(message)
                    except orjson.JSONDecodeError:
                        control = None
                    if type(control) is not dict:
                        await ws.aclose(_UNSUPPORTED, "text frames on this channel must be JSON objects "
                                                      "(set_status, set_headers)")
                        return
                    deliver(peer, ChannelControl(channel_id=cid, data=control))
            # cancelled: the engine reader gave up, or the session went away
            close = None
            why = end.error.message if end.error is not None else "the worker went away"
            with trio.move_on_after(1):
                await ws.aclose(_GOING_AWAY if end.error is None else _FAILED, _reason(why))
        finally:
            end.scope = None
            if channel is not None:
                channel.writing = False
            if close is not None and not end.gone:
                deliver(peer, close)

    async def _serve_read(self, ws: WebSocketConnection, end: _End) -> None:
        """The worker reads what the engine sends on one of our channels."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
            try:
                while not end.gone:
                    if end.frames:
                        frame = end.frames.popleft()
                        end.size -= len(frame)
                        await ws.send_message(frame)
                    elif end.ended:
                        if end.error is None:
                            await ws.aclose(_NORMAL)
                        else:
                            await ws.aclose(_FAILED, _reason(f"{end.error.code}: {end.error.message}"))
                        return
                    else:
                        await end.wait_change()
                with trio.move_on_after(1):
                    await ws.aclose(_GOING_AWAY, "the channel was dropped")
            except ConnectionClosed:
                pass  # the reader left early: what is still sent is dropped
            finally:
                nursery.cancel_scope.cancel()

    async def _serve_pipe(self, ws: WebSocketConnection, end: _End, pipe: _Pipe) -> None:
        """One socket of a pipe; the other end must connect within the sweep time."""
        other = next((e for e in end.group or () if e is not end), None)
        async with trio.open_nursery() as nursery:
            if other is not None and not other.taken:
                nursery.start_soon(self._pipe_watchdog, ws, end, other, nursery.cancel_scope)
            try:
                if end.direction == "write":
                    await self._pipe_write(ws, end, pipe)
                else:
                    await self._pipe_read(ws, end, pipe)
            finally:
                nursery.cancel_scope.cancel()

    async def _pipe_watchdog(self, ws: WebSocketConnection, end: _End, other: _End,
                             scope: trio.CancelScope) -> None:
        await trio.sleep_until(end.created + UNTAKEN_TTL)
        if not other.taken:
            self._drop(other)
            scope.cancel()
            if end.direction == "write":
                self._drop(end)
            with trio.move_on_after(1):
                await ws.aclose(_FAILED, "the other end of the channel was not connected in time")

    async def _pipe_write(self, ws: WebSocketConnection, end: _End, pipe: _Pipe) -> None:
        end.scope = trio.CancelScope()
        try:
            with end.scope:
                while True:
                    while pipe.full():
                        await pipe.wait_change()
                    try:
                        message = await ws.get_message()
                    except ConnectionClosed as exc:
                        clean, code = _clean(exc)
                        if not clean:
                            pipe.error = f"the writer's socket closed with {code}"
                        return
                    if len(message) > MAX_CHANNEL_MESSAGE:
                        pipe.error = "the writer sent a frame over the limit"
                        await ws.aclose(_TOO_BIG, f"channel frames are at most {MAX_CHANNEL_MESSAGE} bytes")
                        return
                    pipe.items.append(message)
                    pipe.size += len(message)
                    pipe.notify()
            with trio.move_on_after(1):  # cancelled: the pipe was dropped (its creator left)
                await ws.aclose(_GOING_AWAY, "the channel was dropped")
        finally:
            end.scope = None
            pipe.writer_done = True
            pipe.notify()
            self._drop(end)

    async def _pipe_read(self, ws: WebSocketConnection, end: _End, pipe: _Pipe) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
                try:
                    while True:
                        if pipe.items:
                            item = pipe.items.popleft()
                            pipe.size -= len(item)
                            pipe.notify()
                            await ws.send_message(item)
                        elif pipe.writer_done:
                            if pipe.error is None:
                                await ws.aclose(_NORMAL)
                            else:
                                await ws.aclose(_FAILED, _reason(pipe.error))
                            return
                        else:
                            await pipe.wait_change()
                finally:
                    nursery.cancel_scope.cancel()
        except ConnectionClosed:
            pass
        finally:
            # the reader is gone: a writer still writing has nobody to write to
            pipe.items.clear()
            pipe.size = 0
            for sibling in end.group or ():
                if sibling is not end and sibling.direction == "write":
                    self._drop(sibling)


async def _until_closed(ws: WebSocketConnection, scope: trio.CancelScope) -> None:
    """Beside a task that only sends: notice the peer closing (what it sends is dropped)."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        scope.cancel()


def iter_ends(endpoints: ChannelEndpoints) -> Iterator[dict[str, Any]]:
    """Each end as a small dict (for tests and debugging)."""
    for end in endpoints._ends.values():
        yield {"channel_id": end.wire_id, "direction": end.direction, "taken": end.taken,
               "pipe": end.pipe is not None, "buffered": end.size}
