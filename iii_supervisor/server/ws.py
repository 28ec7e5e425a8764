"""The WebSocket endpoint: trio-websocket for the handshake, pings and close; our writer for data.

trio-websocket (on wsproto) owns every connection's handshake, its reader, its pings and pongs
and its close handshake. What it is not good at is fan-out: ``send_message`` frames each message
for each connection (wsproto) and goes through the scheduler per call (~39 µs of CPU per
delivery here). A change event sent to a thousand subscribers is the *same* bytes for all of
them (server frames are not masked), so :func:`encode_text_frame` frames it once and a
:class:`FrameSink` per connection queues those bytes, and one :class:`Flusher` task writes every
connection's queued frames with one ``writev`` per connection per scheduler pass.

**Why the frames never interleave with trio-websocket's own.** Every frame trio-websocket
writes (pong, ping, close, a ``send_message``) goes through ``WebSocketConnection._send``, which
serialises it with wsproto and then writes the *whole* frame while holding the connection's
``_stream_lock``. Our writes hold the same lock: the flusher takes it only with
``acquire_nowait`` and never awaits while holding it (a write that would block hands the rest to
the connection's writer task, which awaits the lock like trio-websocket does and keeps it until
the queue is drained). So the byte stream is always a sequence of whole frames, whoever wrote
them. Our frames are whole unfragmented text messages without extensions (we never negotiate
permessage-deflate), so they change nothing in wsproto's state; we write them only while
wsproto's state is OPEN. The close frame we send ourselves (a slow client, 1008) comes from
``wsproto.send(CloseConnection)``, so wsproto knows the connection is closing.

The private attributes used (``_stream``, ``_stream_lock``, ``_wsproto``, ``_close_reason``) are
read in :class:`FrameSink` only; :func:`check_trio_websocket` fails at start if a new
trio-websocket renamed them.

Connections are accepted with ``trio.serve_listeners`` + trio-websocket's public
``wrap_server_stream`` rather than ``WebSocketServer``: that way a connection's tasks live in a
nursery of ours, a connection over the limit is refused before its handshake, the handshake has
a deadline, and an exception inside one connection (trio-websocket raises ``LocalProtocolError``
when a ping arrives while its close is in flight) ends that connection, not the server.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from trio_websocket import WebSocketConnection, WebSocketRequest, wrap_server_stream
from trio_websocket._impl import CloseReason
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection
from wsproto.frame_protocol import FrameProtocol

from ..errors import EngineError

log = logging.getLogger(__name__)

#: frames handed to one writev at most (IOV_MAX is 1024 on Linux)
MAX_IOV = 64


#: one framer for every frame: a server's frames are unmasked, and a whole message (fin) leaves
#: no state behind (building one per frame cost half of the framing, measured)
_SERVER_FRAMES = FrameProtocol(client=False, extensions=[])


def encode_text_frame(text: str) -> bytes:
    """One whole, unmasked text frame (what a server sends), framed by wsproto."""
    return bytes(_SERVER_FRAMES.send_data(text, True))


def check_trio_websocket() -> None:
    """Fail early if trio-websocket no longer has what :class:`FrameSink` relies on."""
    needed = ("_stream", "_stream_lock", "_wsproto", "_close_reason", "_close_handshake", "_reader_running")
    probe = WebSocketConnection.__init__.__code__.co_names
    missing = [name for name in needed if name not in probe]
    if missing:
        raise EngineError(f"this trio-websocket version lacks {', '.join(missing)}: the stream endpoint's "
                          "frame writer needs them (see server/ws.py)", code="config_error")


class SendBuffer:
    """Pure accounting of the bytes queued for one connection: whole frames, the first of which
    may be partly written. Bounded: :meth:`push` refuses what would go over ``limit``."""

    __slots__ = ("frames", "size", "limit", "started")

    def __init__(self, limit: int) -> None:
        self.frames: deque[bytes | memoryview] = deque()
        self.size = 0
        self.limit = limit
        #: the first frame has been partly written (it must be finished before anything else)
        self.started = False

    def __len__(self) -> int:
        return len(self.frames)

    def push(self, frame: bytes, *, force: bool = False) -> bool:
        if not force and self.size + len(frame) > self.limit:
            return False
        self.frames.append(frame)
        self.size += len(frame)
        return True

    def chunk(self, max_frames: int = MAX_IOV) -> list[bytes | memoryview]:
        frames = self.frames
        if len(frames) <= max_frames:
            return list(frames)
        return [frames[i] for i in range(max_frames)]

    def advance(self, sent: int) -> None:
        """``sent`` bytes from the front were written."""
        self.size -= sent
        frames = self.frames
        while sent:
            head = frames[0]
            if sent >= len(head):
                sent -= len(head)
                frames.popleft()
                self.started = False
            else:
                frames[0] = memoryview(head)[sent:]
                self.started = True
                sent = 0

    def drop_unstarted(self) -> int:
        """Forget every frame not begun (keeps the rest of a partly written one); bytes dropped."""
        keep = self.frames[0] if self.started and self.frames else None
        dropped = self.size - (len(keep) if keep is not None else 0)
        self.frames.clear()
        self.size = 0
        if keep is not None:
            self.frames.append(keep)
            self.size = len(keep)
        return dropped


class WriteGate:
    """The connection's write lock, shared by trio-websocket and our sink.

    It replaces ``WebSocketConnection._stream_lock`` (trio-websocket only uses it as ``async
    with``). Unlike a trio lock it is not owned by a task: the sink takes it synchronously and
    may keep it across a write that would block (a frame half written) until its writer task
    finishes that frame, so nothing can slip a pong into the middle of it."""

    __slots__ = ("held", "_lot")

    def __init__(self) -> None:
        self.held = False
        self._lot = trio.lowlevel.ParkingLot()

    def try_take(self) -> bool:
        if self.held:
            return False
        self.held = True
        return True

    async def take(self) -> None:
        while self.held:
            await self._lot.park()
        self.held = True

    def give_back(self) -> None:
        self.held = False
        self._lot.unpark()

    def locked(self) -> bool:
        return self.held

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.take()

    async def __aexit__(self, *exc: object) -> None:
        self.give_back()


def install_gate(request: WebSocketRequest) -> WriteGate:
    """Put a :class:`WriteGate` in place of the connection's lock; call it before ``accept()``
    (until then nothing but the reader, which sends nothing before the handshake, uses it)."""
    conn = request._connection
    gate = WriteGate()
    conn._stream_lock = gate  # type: ignore[assignment]
    return gate


def request_host(request: WebSocketRequest) -> str | None:
    """The upgrade's ``Host`` header (wsproto takes it out of ``request.headers``)."""
    event = getattr(request, "_event", None)
    host = getattr(event, "host", None)
    return host if isinstance(host, str) else None


class FrameSink:
    """The pre-encoded frames bound for one connection (see the module docstring).

    :meth:`send` never blocks and never awaits: it queues, and the :class:`Flusher` writes. A
    connection whose queue would go over ``limit`` bytes is closed with 1008: the frames not yet
    begun are dropped, the close frame follows what was begun, and the socket is cut at most
    ``2 × close_timeout`` seconds later whatever the client does (a client that does not read
    cannot hold it open)."""

    def __init__(self, conn: WebSocketConnection, gate: WriteGate, flusher: Flusher, *, limit: int,
                 close_timeout: float = 1.0, on_close: Callable[[int, str], None] | None = None) -> None:
        if conn._stream_lock is not gate:
            raise RuntimeError("install_gate(request) must come before accept()")
        self.conn = conn
        self._stream: Any = cast(Any, conn._stream)  # a trio.SocketStream (serve_ws accepts TCP only)
        self._gate = gate
        self._fd = self._stream.socket.fileno()
        self.buffer = SendBuffer(limit)
        self.flusher = flusher
        self.close_timeout = close_timeout
        #: called (synchronously) when we decide to close; must not touch the sink's subscriptions' index
        self.on_close = on_close
        #: the writer task owns the socket (and the gate) until the buffer is empty
        self.blocked = False
        self.dirty = False
        #: set once we decided to close (code, reason); nothing more is queued
        self.closing: tuple[int, str] | None = None
        self.dead = False
        #: set once the socket is closed
        self.cut = trio.Event()
        self._holding = False
        self._wake = trio.Event()
        self._scope: trio.CancelScope | None = None

    # --- the hot path (synchronous) ---------------------------------------------------------

    def send(self, frame: bytes) -> bool:
        """Queue ``frame``; False when the connection is closing or this overflowed it."""
        if self.closing is not None or self.dead:
            return False
        if not self.buffer.push(frame):
            self.close(1008, f"send buffer full ({self.buffer.limit} bytes): the client is not reading")
            return False
        if not self.blocked and not self.dirty:
            self.dirty = True
            self.flusher.mark(self)
        return True

    def flush_now(self) -> None:
        """Write what the socket takes without waiting (the flusher's call)."""
        self.dirty = False
        if self.blocked or self.dead or not self.buffer:
            return
        if not self._gate.try_take():  # trio-websocket is writing a frame of its own
            self._hand_to_writer()
            return
        self._holding = True
        if self._write_some() or self.dead:
            self._release()
        else:  # the socket is full: the writer finishes (keeping the gate: a frame may be half out)
            self._hand_to_writer()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._gate.give_back()

    def _write_some(self) -> bool:
        """Write until the socket would block; True when the buffer is empty."""
        buffer = self.buffer
        while buffer:
            if self.closing is None and (self.conn._close_reason is not None
                                         or self.conn._wsproto.state is not ConnectionState.OPEN):
                buffer.drop_unstarted()  # trio-websocket is closing it: nothing new may follow
                if not buffer:
                    return True
            chunk = buffer.chunk()
            try:
                sent = os.writev(self._fd, chunk)
            except BlockingIOError:
                return False
            except OSError:
                self._cut()
                return True
            buffer.advance(sent)
            if sent < sum(map(len, chunk)):
                return False  # the socket took what it could
        return True

    def _hand_to_writer(self) -> None:
        self.blocked = True
        self._wake.set()

    # --- closing -----------------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Close with ``code``: drop the queued frames, send the close frame, cut soon after."""
        if self.closing is not None or self.dead:
            return
        self.closing = (code, reason)
        self.buffer.drop_unstarted()
        conn = self.conn
        if conn._wsproto.state is ConnectionState.OPEN and conn._close_reason is None:
            self.buffer.push(conn._wsproto.send(CloseConnection(code=code, reason=reason)), force=True)
            conn._close_reason = CloseReason(code, reason)  # send_message refuses; aclose sends nothing more
        if self._scope is not None:  # the writer may be stuck in a write: give it close_timeout
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + self.close_timeout)
        self._hand_to_writer()
        if self.on_close is not None:
            self.on_close(code, reason)

    def _cut(self) -> None:
        """Close the TCP connection now (trio-websocket's reader sees it closed and ends)."""
        if not self.dead:
            self.dead = True
            self.buffer.frames.clear()
            self.buffer.size = 0
            self.buffer.started = False
            self._stream.socket.close()  # trio wakes the tasks waiting on it
            self.cut.set()

    # --- the writer task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drains the buffer when a write would block; performs the close. One per connection,
        parked on an event while writes complete at once."""
        task_status.started()
        try:
            while not self.dead:
                await self._wake.wait()
                self._wake = trio.Event()
                deadline = math.inf if self.closing is None else trio.current_time() + self.close_timeout
                with trio.CancelScope(deadline=deadline) as scope:
                    self._scope = scope
                    if not self._holding:
                        await self._gate.take()
                        self._holding = True
                    while not self.dead and not self._write_some():
                        await trio.lowlevel.wait_writable(self._fd)
                self._scope = None
                self.blocked = False
                if self.closing is not None:
                    if not scope.cancelled_caught and not self.dead:
                        self._release()
                        # the close frame is out: give the client close_timeout to answer it
                        with trio.move_on_after(self.close_timeout):
                            await self.conn._close_handshake.wait()
                    self._cut()
                    return
                self._release()
                if self.buffer:
                    self.dirty = True
                    self.flusher.mark(self)
        except (trio.ClosedResourceError, OSError):
            self._cut()
        finally:
            self.blocked = False
            self._release()


class Flusher:
    """One task writing every connection's queued frames: a change event pushed to N sinks in
    one scheduler pass becomes at most one ``writev`` per connection (coalesced)."""

    def __init__(self) -> None:
        self._dirty: list[FrameSink] = []
        self._wake = trio.Event()
        self.passes = 0

    def mark(self, sink: FrameSink) -> None:
        if not self._dirty:
            self._wake.set()
        self._dirty.append(sink)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            # one more pass of the scheduler: producers woken together (a group commit) queue first
            await trio.lowlevel.cancel_shielded_checkpoint()
            dirty, self._dirty = self._dirty, []
            self.passes += 1
            for sink in dirty:
                sink.flush_now()


# --- the listener ------------------------------------------------------------------------------

ConnectionHandler = Callable[[WebSocketRequest, trio.SocketStream], Awaitable[None]]


async def open_ws_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Bind ``host:port`` (0: a free port); an :class:`EngineError` (``ws_bind_failed``) names it.
    Call it before opening the nursery that will serve, so the error reaches the CLI as is."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise EngineError(f"cannot listen on ws://{host}:{port}: {exc.strerror}", code="ws_bind_failed") from exc


async def serve_ws(handler: ConnectionHandler, listeners: list[trio.SocketListener], *, max_message_size: int,
                   max_connections: int, handshake_timeout: float = 10.0, max_handshakes: int | None = None,
                   name: str = "stream endpoint",
                   task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``listeners`` (from :func:`open_ws_listeners`) and call ``handler(request, stream)`` for
    each WebSocket handshake; the handler accepts or rejects it. Started with ``nursery.start``,
    which returns the port. Logs ``"<name> listening on ws://HOST:PORT"``.

    ``max_handshakes``: at most this many connections may be reading their upgrade request at
    once; one more cuts the *oldest* of them. A real upgrade takes milliseconds, so a peer that
    opens connections and sends nothing cannot keep others out (refusing the newest would let it)."""
    check_trio_websocket()
    sockname = listeners[0].socket.getsockname()
    live = 0
    refused = 0
    cut = 0
    handshaking: dict[int, trio.CancelScope] = {}  # insertion order: the oldest first
    ids = itertools.count()

    async def one(stream: trio.SocketStream) -> None:
        nonlocal live, refused
        if live >= max_connections:
            refused += 1
            if refused == 1 or refused % 1000 == 0:
                log.warning("%s: refused a connection: %d are open (max_connections); %d refused so far",
                            name, live, refused)
            await trio.aclose_forcefully(stream)
            return
        live += 1
        key = next(ids)
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(handshake_timeout) as scope:
                    if max_handshakes is not None:
                        nonlocal cut
                        while len(handshaking) >= max_handshakes:
                            handshaking.pop(next(iter(handshaking))).cancel()
                            cut += 1
                            if cut == 1 or cut % 1000 == 0:
                                log.warning("%s: %d connections were reading their upgrade at once (max_handshakes):"
                                            " cut the oldest; %d cut so far", name, max_handshakes, cut)
                        handshaking[key] = scope
                    try:
                        request = await wrap_server_stream(nursery, stream, max_message_size=max_message_size)
                    finally:
                        handshaking.pop(key, None)
                if scope.cancelled_caught:
                    nursery.cancel_scope.cancel()
                else:
                    await handler(request, stream)
                nursery.cancel_scope.cancel()
        except Exception:  # one connection's failure must not end the server
            log.exception("%s: a connection failed", name)
        finally:
            live -= 1
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, one, listeners)
        host_text = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
        log.info("%s listening on ws://%s:%d", name, host_text, sockname[1])
        task_status.started(sockname[1])
