"""The two Unix-socket servers: the worker socket and the control socket.

Worker socket: the peer must run as our uid (SO_PEERCRED) and its first frame, within
``handshake_timeout`` seconds, must be ``hello`` with the token of a worker running now. Anything
else gets an ``error`` frame naming the problem and is disconnected; other connections are not
disturbed. Until the token is checked a connection costs little: its first frame may be at most
``hello_max_frame_size`` bytes (refused on the length header, before buffering), and at most
``max_pending_handshakes`` connections may be waiting to authenticate; more are refused at once.
Control socket: same uid check, no token; the session may only call functions.

A bug in one connection's handling is logged with its traceback and closes that connection;
it never takes the supervisor down.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from ..channels import ChannelTable
from ..errors import AuthError, ConnectionLost, FrameTooLarge, RemoteProtocolError
from ..invocation import Invoker
from ..process.pool import WorkerPool, WorkerSlot
from ..protocol import Hello, WorkerRegistered
from ..ratelimit import RateLimitedLog
from ..registry import Registry
from ..session import PROTOCOL_WARNINGS, Session
from ..transport import FramedStream
from .unix import check_peer_uid, open_unix_listener

log = logging.getLogger(__name__)
#: refused connections: one line per 10 s per socket, then a count (a flood of bad peers must not
#: flood the log)
REFUSED_WARNINGS = RateLimitedLog(log, 10.0)


#: the largest frame a worker-socket peer may send before it has authenticated: room for a hello
#: (a 43-character token, the worker's name, its pid) and nothing a flood could use
HELLO_MAX_FRAME_SIZE = 4096
#: connections on the worker socket that have not presented their token yet, at most
MAX_PENDING_HANDSHAKES = 64


@attrs.frozen(kw_only=True)
class SocketLimits:
    max_frame_size: int
    handshake_timeout: float = 5.0
    max_connections: int = 256
    hello_max_frame_size: int = HELLO_MAX_FRAME_SIZE
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES


async def serve_unix(
    path: Path,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    limits: SocketLimits,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``path`` and run ``handler`` per connection (at most ``max_connections``)."""
    listener = open_unix_listener(path)
    slots = trio.CapacityLimiter(limits.max_connections)

    async def guarded(stream: trio.SocketStream) -> None:
        async with slots:
            try:
                await handler(stream)
            except Exception:
                log.exception("connection handler on %s failed; connection closed", path.name)
            finally:
                await trio.aclose_forcefully(stream)

    try:
        async with trio.open_nursery() as nursery:
            for warnings in (REFUSED_WARNINGS, PROTOCOL_WARNINGS):  # shared by both sockets: flush is idempotent
                await nursery.start(warnings.run)
            await nursery.start(trio.serve_listeners, guarded, [listener])
            task_status.started()
    finally:
        path.unlink(missing_ok=True)


class SessionServer:
    """Authenticates connections and runs a :class:`Session` for each."""

    def __init__(self, registry: Registry, invoker: Invoker, channels: ChannelTable, pool: WorkerPool,
                 limits: SocketLimits) -> None:
        self.registry = registry
        self.invoker = invoker
        self.channels = channels
        self.pool = pool
        self.limits = limits
        self._ids = itertools.count(1)
        #: worker-socket connections that have not authenticated yet
        self.pending_handshakes = 0

    def _framed(self, stream: trio.SocketStream, *, max_receive_size: int | None = None) -> FramedStream:
        return FramedStream(stream, max_frame_size=self.limits.max_frame_size, max_receive_size=max_receive_size)

    async def _peer_pid(self, stream: trio.SocketStream, socket_name: str) -> int | None:
        """The peer's pid if it runs as our user (or root); else refuse it and return None.
        (Before the FramedStream takes the socket over: the credentials are read from it.)"""
        try:
            return check_peer_uid(stream)
        except AuthError as exc:
            REFUSED_WARNINGS.warning(f"{socket_name} socket: refused connections",
                                     "%s socket: refused a connection: %s", socket_name, exc.message)
            await self._framed(stream).send_error_and_close(exc)
            return None

    async def handle_worker(self, stream: trio.SocketStream) -> None:
        peer_pid = await self._peer_pid(stream, "worker")
        if peer_pid is None:
            return
        limits = self.limits
        if self.pending_handshakes >= limits.max_pending_handshakes:
            exc = RemoteProtocolError(f"too many connections waiting to authenticate "
                                      f"({limits.max_pending_handshakes}); "
                                f"connection from pid {peer_pid} refused, try again", code="too_many_handshakes")
            REFUSED_WARNINGS.warning("worker socket: refused connections",
                                     "worker socket: refused a connection: %s", exc.message)
            await self._framed(stream).send_error_and_close(exc)
            return
        self.pending_handshakes += 1
        try:
            authenticated = await self._handshake(stream, peer_pid)
        finally:
            self.pending_handshakes -= 1
        if authenticated is not None:
            await self._serve_worker(peer_pid, *authenticated)

    async def _handshake(self, stream: trio.SocketStream, peer_pid: int) -> tuple[FramedStream, WorkerSlot] | None:
        """Read and check the hello; the stream (now accepting full-size frames) and its slot, or
        None when the peer was refused (it has been told why)."""
        limits = self.limits
        framed = self._framed(stream, max_receive_size=limits.hello_max_frame_size)
        try:
            with trio.fail_after(limits.handshake_timeout):
                try:
                    hello = await framed.receive()
                except FrameTooLarge as exc:
                    raise FrameTooLarge(f"{exc.message} before authentication: the first frame must be a hello "
                                        f"of at most {limits.hello_max_frame_size} bytes") from None
            if not isinstance(hello, Hello):
                raise AuthError("first frame must be 'hello' with the worker token, "
                                f"got {type(hello).__name__.lower()!r}")
            slot = self.pool.authenticate(hello.token)
            if slot is None:
                raise AuthError("invalid worker token: only workers spawned by this supervisor may connect")
            if slot.session is not None:
                raise AuthError(f"worker {slot.name!r} is already connected")
        except trio.TooSlowError:
            await framed.send_error_and_close(
                RemoteProtocolError(f"no hello within {limits.handshake_timeout:g}s", code="handshake_timeout"))
            return None
        except RemoteProtocolError as exc:  # includes AuthError and malformed first frames
            REFUSED_WARNINGS.warning("worker socket: refused connections",
                                     "worker socket: refused a connection: %s", exc.message)
            await framed.send_error_and_close(exc)
            return None
        except ConnectionLost:
            return None
        framed.max_receive_size = limits.max_frame_size
        return framed, slot

    async def _serve_worker(self, peer_pid: int, framed: FramedStream, slot: WorkerSlot) -> None:
        if slot.pid is not None and peer_pid != slot.pid:
            log.info("worker %s connected from pid %d (spawned as pid %d)", slot.name, peer_pid, slot.pid)
        session = Session(framed, name=slot.name, worker_id=f"{slot.name}-{next(self._ids)}", registry=self.registry,
                          invoker=self.invoker, channels=self.channels, is_worker=True, pid=peer_pid)
        session.group = slot.spec.name
        self.pool.attach(slot, session)
        framed.send_nowait(WorkerRegistered(worker_id=session.worker_id, name=slot.name,
                                            max_frame_size=self.limits.max_frame_size))
        log.info("worker %s connected (pid %d, %s)", slot.name, peer_pid, session.worker_id)
        try:
            await session.serve()
        finally:
            self.pool.detach(slot, session)

    async def handle_control(self, stream: trio.SocketStream) -> None:
        peer_pid = await self._peer_pid(stream, "control")
        if peer_pid is None:
            return
        framed = self._framed(stream)
        session = Session(framed, name=f"control[{peer_pid}]", worker_id=f"control-{next(self._ids)}",
                          registry=self.registry, invoker=self.invoker, channels=self.channels, is_worker=False,
                          pid=peer_pid)
        await session.serve()
