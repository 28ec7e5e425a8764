"""The engine side of one authenticated connection: dispatch of incoming messages.

A :class:`Session` is either a *worker* session (a spawned worker that presented its token; may
register functions, triggers and trigger types) or a *control* session (the CLI on the control
socket; may only call functions). Both speak the same messages.

Cleanup is one synchronous step in :meth:`Session.close`: the registry drops everything the
session owned and the invoker fails every call in flight to it, before any other task runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import trio

from .channels import ChannelTable
from .errors import (
    ConnectionLost,
    LocalProtocolError,
    RegistrationError,
    RemoteProtocolError,
    TriggerRegistrationError,
)
from .invocation import Invoker
from .protocol import (
    ChannelClose,
    ChannelControl,
    ChannelWindow,
    Chunk,
    ErrorBody,
    Event,
    FunctionRegistered,
    InvocationResult,
    InvokeFunction,
    Message,
    Ping,
    Pong,
    RegisterFunction,
    RegisterTrigger,
    RegisterTriggerType,
    TriggerRegistrationResult,
    UnregisterFunction,
    UnregisterTrigger,
    UnregisterTriggerType,
    WorkerReady,
)
from .ratelimit import RateLimitedLog
from .registry import FunctionEntry, Registry, TriggerEntry, TriggerTypeEntry
from .transport import FramedStream

log = logging.getLogger(__name__)
#: protocol errors are logged at most once per 10 s per socket kind, with a count of the rest
#: (one hostile client must not flood the journal); its flusher runs beside the socket servers
PROTOCOL_WARNINGS = RateLimitedLog(log, 10.0)
#: functions, triggers and trigger types one connection may hold (each): no peer may grow the
#: registry without bound (the iii door admits any local user by default)
MAX_REGISTRATIONS = 10_000
#: refused registrations logged one by one per connection; beyond, rate-limited
LOGGED_REFUSALS = 20

#: events dispatched between two checkpoints (measured: whole 64-frame reads serialise the
#: pipeline A → supervisor → B; slices of 16 keep every process busy)
DISPATCH_SLICE = 16



class WorkerTriggerProvider:
    """A trigger type provided by a worker: bindings are forwarded to it as messages."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def register(self, trigger: TriggerEntry) -> None:
        try:
            self.session.send_nowait(RegisterTrigger(id=trigger.id, trigger_type=trigger.trigger_type,
                                                     function_id=trigger.function_id, config=trigger.config,
                                                     metadata=trigger.metadata))
        except LocalProtocolError as exc:  # (a config that grew when re-encoded): refuse it, like a bad config
            raise TriggerRegistrationError(f"trigger {trigger.id!r} cannot be sent to the provider of "
                                           f"{trigger.trigger_type!r} ({self.session.name}): {exc.message}") from None

    def unregister(self, trigger: TriggerEntry) -> None:
        self.session.send_nowait(UnregisterTrigger(id=trigger.id, trigger_type=trigger.trigger_type))


class Session:
    def __init__(self, stream: FramedStream, *, name: str, worker_id: str, registry: Registry,
                 invoker: Invoker, channels: ChannelTable, is_worker: bool, pid: int | None = None) -> None:
        self.stream = stream
        self.name = name
        self.worker_id = worker_id
        self.pid = pid
        self.registry = registry
        self.invoker = invoker
        self.is_worker = is_worker
        self.channels = channels
        self.cancel_scope = trio.CancelScope()
        self.closed = trio.Event()
        #: the worker program this session is an instance of (``api`` for ``api:1``): instances
        #: of one worker may register the same functions and triggers (see the registry)
        self.group: str | None = None
        #: called when the worker says it has finished starting (``workerready``)
        self.on_ready: Callable[[], None] | None = None
        self._pong: trio.Event | None = None
        #: what this connection registered (counted against MAX_REGISTRATIONS)
        self._function_ids: set[str] = set()
        self._trigger_ids: set[str] = set()
        self._trigger_type_ids: set[str] = set()
        self._refusals = 0

    def __repr__(self) -> str:
        return f"<Session {self.name} {self.worker_id}>"

    def send_nowait(self, msg: Message | Chunk) -> None:
        if not self.stream.closed:
            self.stream.send_nowait(msg)

    def ping(self) -> trio.Event:
        """Send a ``ping``; the event is set when the next ``pong`` arrives."""
        self._pong = trio.Event()
        self.send_nowait(Ping())
        return self._pong

    def backlog(self) -> int:
        """Bytes queued for this peer that its socket has not taken yet."""
        return self.stream.pending_bytes

    async def serve(self) -> None:
        """Dispatch messages until the peer leaves, breaks the protocol, or we are cancelled."""
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.stream.run_writer)
                    await self._receive_loop()
                    nursery.cancel_scope.cancel()
        finally:
            self.close()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _receive_loop(self) -> None:
        dispatch = self.dispatch
        try:
            async for batch in self.stream.batches():
                for i, event in enumerate(batch, 1):
                    try:
                        dispatch(event)
                    except LocalProtocolError as exc:  # we could not encode an answer: not the peer's fault
                        PROTOCOL_WARNINGS.warning(("could not answer", self.name), "%s: could not answer %s: %s",
                                                  self.name, type(event).__name__, exc.message)
                    if i % DISPATCH_SLICE == 0:
                        # let the writers forward what is dispatched so far: the next process
                        # in the pipeline starts working instead of waiting for the whole read
                        await trio.lowlevel.checkpoint()
        except RemoteProtocolError as exc:
            PROTOCOL_WARNINGS.warning("worker protocol errors" if self.is_worker else "control protocol errors",
                                      "%s: protocol error, closing the connection: %s", self.name, exc.message)
            await self.stream.send_error_and_close(exc)
        except ConnectionLost:
            pass

    def close(self) -> None:
        """Remove everything this session owns and fail its calls. Idempotent, synchronous."""
        if self.closed.is_set():
            return
        functions, triggers = self.registry.remove_owner(self)
        self.invoker.session_closed(self)
        self.channels.peer_closed(self)
        self.closed.set()
        self.cancel_scope.cancel()
        if functions or triggers:
            log.info("%s: removed %d function(s) and %d trigger(s)", self.name, len(functions), len(triggers))

    # --- dispatch -----------------------------------------------------------------------------

    def dispatch(self, event: Event) -> None:
        match event:
            case InvokeFunction():
                self.invoker.route(self, event)
            case InvocationResult():
                self.invoker.on_result(self, event)
            case Ping():
                self.send_nowait(Pong())
            case Pong():
                if self._pong is not None:
                    self._pong.set()
            case WorkerReady():
                if self.on_ready is not None:
                    self.on_ready()
            case Chunk() | ChannelControl() | ChannelClose() | ChannelWindow():
                self.channels.deliver(self, event)
            case RegisterFunction() | UnregisterFunction() | RegisterTrigger() | UnregisterTrigger() | \
                    RegisterTriggerType() | UnregisterTriggerType() | TriggerRegistrationResult():
                if not self.is_worker:
                    raise RemoteProtocolError(f"{type(event).__name__} is not allowed on the control socket")
                self._registration(event)
            case _:
                raise RemoteProtocolError(f"unexpected {type(event).__name__} from {self.name}")

    def _refused(self, fmt: str, *args: object) -> None:
        """Log a refused registration: each of the first few, then rate-limited (a peer repeating
        a refused one must not write a line per frame)."""
        self._refusals += 1
        if self._refusals <= LOGGED_REFUSALS:
            log.warning(fmt, *args)
        else:
            PROTOCOL_WARNINGS.warning(("registrations refused", self.worker_id), fmt, *args)

    def _registration(self, msg: Any) -> None:
        registry = self.registry
        match msg:
            case RegisterFunction():
                error = None
                if msg.id.startswith("engine::"):
                    error = RegistrationError(f"function id {msg.id!r} is reserved: 'engine::' belongs to the engine")
                elif msg.id not in self._function_ids and len(self._function_ids) >= MAX_REGISTRATIONS:
                    error = RegistrationError(f"function {msg.id!r} refused: this connection holds "
                                              f"{MAX_REGISTRATIONS} functions already (the limit per connection)")
                else:
                    try:
                        _listable(msg.metadata, f"registerfunction {msg.id!r}: metadata", RegistrationError)
                        # an external function is served in-process (HTTP), but owned by this worker
                        builtin = registry.external_handler(msg.id, msg.invocation,
                                                            attached=getattr(self, "attached", False)) \
                            if msg.invocation is not None else None
                        registry.add_function(FunctionEntry(msg.id, self, description=msg.description,
                                                            metadata=msg.metadata, builtin=builtin))
                        self._function_ids.add(msg.id)
                    except RegistrationError as exc:
                        error = exc
                if error is not None:
                    self._refused("%s: registerfunction %r refused: %s", self.name, msg.id, error.message)
                self.send_nowait(FunctionRegistered(id=msg.id, error=ErrorBody.of(error) if error else None))
            case UnregisterFunction():
                registry.remove_function(msg.id, self)
                self._function_ids.discard(msg.id)
            case RegisterTrigger():
                entry = TriggerEntry(msg.id, msg.trigger_type, msg.function_id, msg.config or {}, self,
                                     metadata=msg.metadata)
                error = None
                try:
                    _listable(msg.config, f"registertrigger {msg.id!r}: config", TriggerRegistrationError)
                    _listable(msg.metadata, f"registertrigger {msg.id!r}: metadata", TriggerRegistrationError)
                    if msg.id not in self._trigger_ids and len(self._trigger_ids) >= MAX_REGISTRATIONS:
                        raise TriggerRegistrationError(f"trigger {msg.id!r} refused: this connection holds "
                                                       f"{MAX_REGISTRATIONS} triggers already (the limit per "
                                                       "connection)")
                    registry.add_trigger(entry)
                    self._trigger_ids.add(msg.id)
                except RegistrationError as exc:
                    error = exc
                    self._refused("%s: registertrigger %s (%s → %s) refused: %s", self.name, msg.id,
                                  msg.trigger_type, msg.function_id, exc.message)
                self.send_nowait(TriggerRegistrationResult(id=msg.id, trigger_type=msg.trigger_type,
                                                           function_id=msg.function_id,
                                                           error=ErrorBody.of(error) if error else None))
            case UnregisterTrigger():
                registry.remove_trigger(msg.id, self)
                self._trigger_ids.discard(msg.id)
            case RegisterTriggerType():
                try:
                    if msg.id not in self._trigger_type_ids and len(self._trigger_type_ids) >= MAX_REGISTRATIONS:
                        raise RegistrationError(f"this connection holds {MAX_REGISTRATIONS} trigger types already "
                                                "(the limit per connection)")
                    registry.add_trigger_type(TriggerTypeEntry(msg.id, msg.description, WorkerTriggerProvider(self),
                                                               owner=self))
                    self._trigger_type_ids.add(msg.id)
                except RegistrationError as exc:
                    self._refused("%s: registertriggertype %r refused: %s", self.name, msg.id, exc.message)
            case UnregisterTriggerType():
                registry.remove_trigger_type(msg.id, self)
                self._trigger_type_ids.discard(msg.id)
            case TriggerRegistrationResult():
                # A worker provider refused a binding: tell the worker that asked for it.
                trigger = registry.trigger(msg.id)
                type_entry = registry.trigger_type(trigger.trigger_type) if trigger else None
                if msg.error is None or trigger is None or type_entry is None or type_entry.owner is not self:
                    return  # only the provider of the binding's type may refuse it
                log.warning("trigger %s refused by provider %s: %s", msg.id, self.name, msg.error.message)
                registry.remove_trigger(trigger.id, trigger.owner)  # refused: not listed as active
                owner = trigger.owner
                if isinstance(owner, Session):
                    owner.send_nowait(msg)


def _listable(value: Any, what: str, error: type[RegistrationError]) -> None:
    """Refuse a registration field that could not be encoded again: it is kept and listed
    (``engine::functions::list``, ``triggers``, a provider's ``registertrigger``), and JSON
    decoded from a peer may nest deeper than orjson encodes (1024 levels in, 254 out)."""
    if value is None:
        return
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise error(f"{what} cannot be encoded as JSON again ({exc}): nest it at most 254 levels deep") from None
