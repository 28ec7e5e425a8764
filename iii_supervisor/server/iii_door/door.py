"""The iii door: the reference engine's worker protocol over WebSocket, for the official SDKs.

Paths (as the reference's worker manager): ``/`` a worker, ``/otel`` the SDK's telemetry,
``/ws/channels/{id}?key=&dir=`` one end of a channel; anything else is refused with 404.

Who is connecting is decided at the upgrade, from ``Authorization: Bearer <token>`` (the SDK
sends ``$III_TOKEN``):

- the token of a worker the supervisor spawned *now* (its per-spawn secret, in its ``III_TOKEN``):
  the connection IS that worker instance (status, pid, readiness, restarts);
- anything else is an *attached* worker, allowed by default (like the reference) unless
  ``[iii] token_file`` / ``token_env`` (a shared secret) or ``auth_function_id`` say otherwise.

Then the engine sends ``workerregistered`` at once (there is no client hello) and the connection
is served by a :class:`DoorSession`: our :class:`~iii_supervisor.session.Session` over a
:class:`~.stream.WsStream`, plus what only this door has (``reattach``, the worker's metadata from
its ``engine::workers::register`` call).
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import secrets
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import WebSocketConnection, WebSocketRequest

from ...errors import ConfigError, EngineError
from ...modules.base import ModuleContext
from ...protocol import Event, InvocationResult, InvokeFunction, Pong
from ...session import PROTOCOL_WARNINGS, Session
from ..ws import Flusher, FrameSink, install_gate, open_ws_listeners, serve_ws
from . import otel, wire
from .channels import ChannelEndpoints
from .config import IiiConfig
from .stream import WsStream

log = logging.getLogger(__name__)

REGISTER_FUNCTION = "engine::workers::register"
#: largest message on a telemetry socket (OTLP-JSON batches) and on a channel socket (the SDK
#: writes chunks of 64 KiB; the reference keeps channel frames under 1 MiB)
OTEL_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
CHANNEL_MAX_MESSAGE_SIZE = 1024 * 1024 + 64 * 1024
#: the metadata fields of ``engine::workers::register`` that are kept (bounded: nothing else is)
_METADATA_KEYS = ("name", "runtime", "version", "os", "pid", "description", "namespace", "isolation")
_PONG = Pong()


class DoorSession(Session):
    """A Session of a WebSocket-door worker."""

    def __init__(self, stream: WsStream, door: IiiDoor, *, attached: bool, address: str, **kwargs: Any) -> None:
        super().__init__(stream, **kwargs)  # type: ignore[arg-type]
        self.ws = stream
        self.door = door
        self.attached = attached
        self.address = address
        self.reattach_token = secrets.token_urlsafe(32)
        self.connected_at = trio.current_time()
        #: what the worker said about itself (``engine::workers::register``)
        self.metadata: dict[str, Any] = {}
        #: a reattach and a register call are logged once per connection: a peer repeating them
        #: must not write a log line per frame
        self._reattached = False
        self._registered = False

    def close(self) -> None:
        """Session.close, and the door forgets the connection in the same synchronous step."""
        if self.closed.is_set():
            return
        self.door.forget(self)
        super().close()
        try:
            self.door.endpoints.session_closed(self)
        except Exception:  # a bug there must not stop the rest of the clean-up (the caller's)
            log.exception("iii door: channel clean-up of %s failed", self.name)

    def dispatch(self, event: Event) -> None:
        if isinstance(event, wire.Reattach):
            if self._reattached:  # (the SDK sends one, first): a repeat is ignored
                PROTOCOL_WARNINGS.warning("iii door repeated reattach", "iii door: %s sent reattach again: ignored",
                                          self.name)
                return
            self._reattached = True
            self.door.reattach(self, event)
        elif type(event) is InvokeFunction and event.function_id == REGISTER_FUNCTION:
            self.registered(event)
        else:
            super().dispatch(event)

    def registered(self, msg: InvokeFunction) -> None:
        """The SDK's (void) ``engine::workers::register`` call: record who it is; it has finished
        its start-up registrations (it sends them first), so it counts as ready."""
        data = msg.data if isinstance(msg.data, dict) else {}
        self.metadata = {k: data[k] for k in _METADATA_KEYS
                         if isinstance(data.get(k), str | int) and len(str(data[k])) <= 256}
        if self.attached and isinstance(self.metadata.get("name"), str):
            self.name = self.door.unique_name(str(self.metadata["name"]), self)
        log.log(logging.DEBUG if self._registered else logging.INFO,
                "iii door: worker %s registered (%s %s, pid %s, %s)", self.name, self.metadata.get("runtime", "?"),
                self.metadata.get("version", "?"), self.metadata.get("pid", "?"), self.worker_id)
        self._registered = True
        if self.on_ready is not None:
            self.on_ready()
        if msg.invocation_id is not None:
            self.send_nowait(InvocationResult(invocation_id=msg.invocation_id, function_id=REGISTER_FUNCTION,
                                              result={"success": True}))

    def status_row(self) -> dict[str, Any]:
        """This attached worker's line in ``engine::workers::list`` (no pid: not our child)."""
        return {
            "name": self.name, "pid": None, "state": "attached", "restarts": None,
            "uptime_s": round(trio.current_time() - self.connected_at, 3),
            "functions": self.registry.functions_of(self), "rss_bytes": None, "cpu_percent": None,
            "in_flight": self.invoker.in_flight(self), "last_exit": None, "last_exit_reason": None,
            "max_rss": None, "worker_id": self.worker_id, "path": None, "address": self.address,
            "attached": True, **{f"reported_{k}": v for k, v in self.metadata.items()},
        }


class IiiDoor:
    """The module: listens when ``[iii] port`` is set (otherwise it does nothing)."""

    def __init__(self, config: IiiConfig, ctx: ModuleContext) -> None:
        self.config = config
        self.registry = ctx.registry
        self.invoker = ctx.invoker
        self.channels = ctx.channels
        self.pool = ctx.pool
        self.endpoints = ChannelEndpoints(ctx.channels, ctx.registry)
        self.flusher = Flusher()
        #: live worker sessions by worker id
        self.sessions: dict[str, DoorSession] = {}
        self.port: int | None = None
        self.url: str | None = None
        self._shared_token: str | None = None
        #: open sockets of attached peers (``max_connections``), and upgrades refused for it
        self._attached_sockets = 0
        self._attached_refused = 0
        self._ids = itertools.count(1)
        #: what a connection may have queued for it before it is closed (1008): beyond the
        #: invoker's worker_overloaded limit, with room for the largest message
        self.send_limit = self.invoker.max_backlog + 2 * config.max_message_size

    # --- the module -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        if config.port is None:  # off (the default)
            task_status.started(None)
            return
        self._shared_token = self._load_token()
        listeners = await open_ws_listeners(config.host, config.port)  # a busy port fails here, plainly
        try:
            async with trio.open_nursery() as nursery:
                self.registry.add_builtin(REGISTER_FUNCTION, self._register_builtin,
                                          "A WebSocket-door worker says who it is (runtime, version, name, pid)")
                self.endpoints.install()
                await nursery.start(self.flusher.run)
                self.port = await nursery.start(partial(
                    serve_ws, self._connection, listeners, max_message_size=config.max_message_size,
                    max_connections=config.max_sockets, max_handshakes=config.max_handshakes,
                    handshake_timeout=config.handshake_timeout, name="iii door"))
                host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
                self.url = f"ws://[{host}]:{self.port}" if ":" in host else f"ws://{host}:{self.port}"
                if self.pool is not None:  # spawned workers find the door, and prove who they are
                    self.pool.door_url = self.url
                task_status.started(self.port)
                await trio.sleep_forever()
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    def _load_token(self) -> str | None:
        config = self.config
        if config.token_env is not None:
            token = os.environ.get(config.token_env, "").strip()
            if not token:
                raise ConfigError(f"iii.token_env: the environment variable {config.token_env!r} is not set or empty")
            return token
        if config.token_file is not None:
            path = Path(config.token_file).expanduser()
            try:
                mode = path.stat().st_mode
                text = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"iii.token_file: cannot read {str(path)!r}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"iii.token_file: {str(path)!r} is not UTF-8 text") from None
            token = text.splitlines()[0].strip() if text else ""
            if not token:
                raise ConfigError(f"iii.token_file: {str(path)!r} is empty")
            if mode & (stat.S_IRGRP | stat.S_IROTH):
                log.warning("iii door: token file %s is readable by other users (chmod 600 it)", path)
            return token
        return None

    async def _register_builtin(self, data: Any) -> dict[str, Any]:
        # A door worker's own call is answered by its session (it knows who is calling); this is
        # what any other caller gets.
        return {"success": True}

    # --- connections ------------------------------------------------------------------------------

    async def _connection(self, request: WebSocketRequest, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            address = f"{peer[0]}:{peer[1]}"
        except OSError:
            address = "?"
        target = wire.route(request.path)
        if target.kind == "worker":
            await self._worker(request, address)
        elif target.kind == "otel":
            admitted = await self._admit(request, address, "telemetry")
            if admitted is not None:
                slot, attached = admitted
                with self._counted(attached):
                    conn = await request.accept()
                    _limit(conn, OTEL_MAX_MESSAGE_SIZE)
                    await otel.serve_otel(conn, self.invoker, peer_name=slot.name if slot is not None else address)
        elif target.kind == "channel":
            channel_id, key, direction = target.channel_id, target.param("key"), target.param("dir")
            if not self.endpoints.admits(channel_id, key, direction):
                await request.reject(404, body=b"no such channel (or a wrong key)")
                return
            conn = await request.accept()
            _limit(conn, CHANNEL_MAX_MESSAGE_SIZE)
            await self.endpoints.serve(conn, channel_id, key, direction)
        else:
            path = urlsplit(request.path).path
            await request.reject(404, body=f"no such endpoint {path!r:.100} (the iii door serves /, /otel "
                                            "and /ws/channels/ID)".encode())

    @contextmanager
    def _counted(self, attached: bool) -> Iterator[None]:
        """An attached peer's socket counts against ``max_connections`` while it is open."""
        if not attached:
            yield
            return
        self._attached_sockets += 1
        try:
            yield
        finally:
            self._attached_sockets -= 1

    async def _admit(self, request: WebSocketRequest, address: str, what: str) -> tuple[Any, bool] | None:
        """Who this upgrade is: ``(slot, False)`` for a spawned worker, ``(None, True)`` for an
        attached one; None when refused (the upgrade was answered 401/403/503)."""
        bearer = _presented_token(request)
        if bearer is not None and self.pool is not None:
            slot = self.pool.authenticate(bearer)
            if slot is not None:
                return slot, False
        if self._shared_token is not None and (bearer is None or not hmac.compare_digest(
                bearer.encode(), self._shared_token.encode())):
            reason = "a token is required" if bearer is None else "invalid token"
            log.warning("iii door: refused %s connection from %s: %s (iii.token_file / iii.token_env)",
                        what, address, reason)
            await request.reject(401, body=f"{reason}: send Authorization: Bearer <token>".encode())
            return None
        if self.config.auth_function_id is not None:
            refusal = await self._authorize(request, address)
            if refusal is not None:
                status, reason = refusal
                log.warning("iii door: refused %s connection from %s: %s", what, address, reason)
                await request.reject(status, body=reason.encode())
                return None
        if self._attached_sockets >= self.config.max_connections:
            self._attached_refused += 1
            if self._attached_refused == 1 or self._attached_refused % 1000 == 0:
                log.warning("iii door: refused %s connection from %s: %d attached sockets are open "
                            "(iii.max_connections); %d refused so far", what, address, self._attached_sockets,
                            self._attached_refused)
            await request.reject(503, body=f"too many attached connections ({self.config.max_connections}, "
                                           "iii.max_connections)".encode())
            return None
        return None, True

    async def _authorize(self, request: WebSocketRequest, address: str) -> tuple[int, str] | None:
        """Ask ``auth_function_id``; None lets the connection in, else (status, reason)."""
        function_id = self.config.auth_function_id
        assert function_id is not None
        query = wire.route(request.path).query
        payload = {"headers": {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers},
                   "query_params": query, "ip_address": address.rsplit(":", 1)[0]}
        try:
            result = await self.invoker.call(function_id, payload, timeout=self.config.auth_timeout_ms / 1000)
        except EngineError as exc:  # (a built-in's own kinds too: a StoreError is no InvocationError)
            return 401, f"authentication failed: {function_id} answered {exc.code}: {exc.message}"
        if result is False or result is None or (isinstance(result, dict) and result.get("allowed") is False):
            reason = result.get("reason") if isinstance(result, dict) else None
            return 403, f"denied by {function_id}" + (f": {reason}" if isinstance(reason, str) else "")
        return None

    async def _worker(self, request: WebSocketRequest, address: str) -> None:
        admitted = await self._admit(request, address, "worker")
        if admitted is None:
            return
        with self._counted(admitted[1]):
            await self._serve_worker(request, address, *admitted)

    async def _serve_worker(self, request: WebSocketRequest, address: str, slot: Any, attached: bool) -> None:
        config = self.config
        gate = install_gate(request)
        conn = await request.accept()
        sink = FrameSink(conn, gate, self.flusher, limit=self.send_limit, close_timeout=config.close_timeout)
        ws = WsStream(conn, sink, self.endpoints, max_message_size=config.max_message_size,
                      ping_interval=config.ping_interval, ping_timeout=config.ping_timeout,
                      close_timeout=config.close_timeout, owner_of=self._owner_of)
        worker_id = str(uuid.uuid4())
        name = slot.name if slot is not None else f"attached-{next(self._ids)}"
        session = DoorSession(ws, self, attached=attached, address=address, name=name, worker_id=worker_id,
                              registry=self.registry, invoker=self.invoker, channels=self.channels, is_worker=True,
                              pid=slot.pid if slot is not None else None)
        ws.session = session
        ws.on_pong = partial(session.dispatch, _PONG)
        if slot is not None:
            assert self.pool is not None
            session.group = slot.spec.name
            previous = slot.session
            if previous is not None:  # its own token proves it is the same instance: the new socket wins
                log.info("iii door: worker %s connected again; closing its previous connection", slot.name)
                previous.close()
                self.pool.detach(slot, previous)
            self.pool.attach(slot, session)
        else:
            assert self.pool is None or isinstance(self.pool.attached, dict)
            if self.pool is not None:
                self.pool.attached[worker_id] = session
        self.sessions[worker_id] = session
        ws.send_raw(wire.worker_registered(worker_id, session.reattach_token))
        log.info("iii door: %s %s connected from %s (%s)", "attached worker" if attached else "worker", name,
                 address, worker_id)
        try:
            await session.serve()
        finally:
            self.forget(session)
            if self.pool is not None and slot is not None:
                self.pool.detach(slot, session)
            sink._cut()
            log.info("iii door: %s disconnected (%s)", session.name, worker_id)

    # --- what sessions ask ------------------------------------------------------------------------

    def reattach(self, session: DoorSession, msg: wire.Reattach) -> None:
        """A reconnecting worker names its previous connection: with the right token, that one is
        closed and cleaned up now, before the registrations it replays are handled."""
        previous = self.sessions.get(msg.previous_worker_id)
        if previous is None or previous is session:
            log.info("iii door: %s reattached (its previous connection %s is already gone)", session.name,
                     msg.previous_worker_id)
            return
        if msg.reattach_token is None or not hmac.compare_digest(msg.reattach_token.encode(),
                                                                 previous.reattach_token.encode()):
            log.warning("iii door: %s named %s as its previous connection with a wrong reattach token: ignored",
                        session.name, msg.previous_worker_id)
            return
        log.info("iii door: %s reattached: closing its previous connection %s", session.name, previous.worker_id)
        previous.close()

    def forget(self, session: DoorSession) -> None:
        if self.sessions.get(session.worker_id) is session:
            del self.sessions[session.worker_id]
        if self.pool is not None:
            self.pool.attached.pop(session.worker_id, None)

    def unique_name(self, wanted: str, session: DoorSession) -> str:
        """``wanted``, or ``wanted#N`` while another worker has that name."""
        taken = {s.name for s in self.sessions.values() if s is not session}
        if self.pool is not None:
            taken |= set(self.pool.slots)
        name, n = wanted, 1
        while name in taken:
            n += 1
            name = f"{wanted}#{n}"
        return name

    def _owner_of(self, function_id: str) -> str:
        entry = self.registry.lookup(function_id)
        if entry is None:
            return ""
        owner = entry.owner
        return getattr(owner, "worker_id", None) or (owner.name if owner is not None else "engine")


def _limit(conn: WebSocketConnection, size: int) -> None:
    """Lower an accepted connection's message limit (serve_ws sets one for all before the path is known)."""
    if hasattr(conn, "_max_message_size"):
        conn._max_message_size = min(conn._max_message_size, size)


def _presented_token(request: WebSocketRequest) -> str | None:
    """``Authorization: Bearer <token>`` (the Python SDK sends ``$III_TOKEN``), else the URL's
    ``?token=`` (spawned workers' ``III_URL`` carries it: the Node SDK sends no such header, and
    both SDKs keep the query on every socket they open)."""
    for key, value in request.headers:
        if key.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    token = wire.route(request.path).param("token")
    return token or None

