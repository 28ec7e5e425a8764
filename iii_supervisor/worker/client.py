"""The worker SDK: ``iii = register_worker()`` and the ``III`` client.

Theory of operation
-------------------
``register_worker()`` connects to the supervisor's socket (``$III_SOCKET``), presents the secret
token it was spawned with (``$III_WORKER_TOKEN``) and returns once the supervisor has accepted it.
The connection lives in a trio loop on its own thread, so a worker script can register its
functions and triggers and simply end its main code, like the iii documentation's snippets:
the process keeps serving until the supervisor goes away, then exits. Python's shutdown waits
for that before it begins (see :mod:`.lifetime`), so handlers can use the whole standard library
(``concurrent.futures``, ``multiprocessing``, ``asyncio.run`` …).

- Async handlers run as tasks on that trio loop (they may await trio primitives).
- Sync handlers run in worker threads (``trio.to_thread``), so they never block the loop, and
  may themselves call ``iii.trigger(...)``.
- The blocking methods (``register_function``, ``register_trigger``, ``trigger``) are thread-safe
  and may be called from the main thread or a sync handler. Inside an async handler use
  ``await iii.trigger_async(...)``: a blocking call there would deadlock the loop, so it raises.

Registrations are acknowledged by the supervisor; a refused one (function id owned by another
worker, unknown trigger type, bad config) raises here, at the line that asked for it.
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
import logging
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import trio

from ..errors import ConnectionLost, EngineError, InvocationTimeout, ProtocolError, RegistrationError, error_from_wire
from ..inbox import Inbox
from ..protocol import (
    Action,
    ChannelClose,
    ChannelWindow,
    Chunk,
    Error,
    ErrorBody,
    Event,
    FunctionRegistered,
    Hello,
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
    WorkerRegistered,
)
from ..protocol.channels import ChannelRef, Direction
from ..transport import FramedStream
from . import lifetime
from .channels import ChannelReader, ChannelWriter
from .external import invocation_wire
from .logger import attach as _attach_logger
from .logger import enter_invocation, outgoing_context

log = logging.getLogger("iii_supervisor.worker")

Handler = Callable[[Any], Any]
REGISTRATION_TIMEOUT = 10.0

_current_client: contextvars.ContextVar[III] = contextvars.ContextVar("iii_current_client")


def current_client() -> III:
    """The client serving the current invocation (used by ``@http``)."""
    try:
        return _current_client.get()
    except LookupError:
        raise RuntimeError("not inside an iii handler") from None


def _channel_id(ref: Any, direction: Direction) -> int:
    parsed = ChannelRef.parse(ref, direction)
    if parsed is None:
        raise ValueError(f"not a {direction} channel reference: {ref!r}")
    return parsed.channel_id


@attrs.define(kw_only=True)
class InitOptions:
    """Options of :func:`register_worker` (also accepted as a plain dict)."""

    worker_name: str | None = None
    #: Default deadline of ``trigger()`` calls (the supervisor enforces it).
    invocation_timeout_ms: int = 30_000
    #: Seconds ``trigger()`` waits beyond a call's ``timeout_ms`` before it gives up on its own
    #: (the supervisor answers ``invocation_timeout`` first; this covers an answer that is lost).
    trigger_deadline_margin: float = 5.0
    #: Most sync handlers running at once (each in its own thread). More threads than cores
    #: only fight over the GIL: 8 measured faster than 64 for CPU-light handlers.
    max_threads: int = 8
    #: Exit the process when the supervisor goes away (what a supervised worker wants).
    exit_on_disconnect: bool = True
    connect_timeout: float = 30.0


@attrs.frozen
class FunctionRef:
    id: str
    _client: III = attrs.field(repr=False)

    def unregister(self) -> None:
        self._client._unregister_function(self.id)


@attrs.frozen
class Trigger:
    id: str
    trigger_type: str
    function_id: str
    _client: III = attrs.field(repr=False)

    def unregister(self) -> None:
        self._client._send_threadsafe(UnregisterTrigger(id=self.id, trigger_type=self.trigger_type))


@attrs.frozen
class TriggerConfig:
    """What a trigger-type provider gets for each binding of its type."""

    id: str
    function_id: str
    config: dict[str, Any]
    metadata: dict[str, Any] | None = None


@attrs.frozen
class TriggerTypeRef:
    id: str
    _client: III = attrs.field(repr=False)

    def unregister(self) -> None:
        self._client._trigger_types.pop(self.id, None)
        self._client._send_threadsafe(UnregisterTriggerType(id=self.id))


def _function_id(spec: Any) -> tuple[str, dict[str, Any]]:
    """``"id"`` or ``{"id": ..., "description": ..., "metadata": ...}`` (the seed's form)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict) and isinstance(spec.get("id"), str):
        extra = {k: spec[k] for k in ("description", "metadata", "request_format", "response_format", "invocation")
                 if k in spec}
        return spec["id"], extra
    raise TypeError(f"function id must be a str or a dict with a str 'id', got {spec!r}")


def _without_argument(handler: Handler) -> Handler:
    """A handler that takes no argument (``def cleanup():``, as the iii docs' cron examples
    write it) is called without the payload."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it as given
        return handler
    if any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        return handler
    if _is_async(handler):
        async def call_async(_data: Any) -> Any:
            return await handler()  # type: ignore[call-arg]
        return call_async

    def call(_data: Any) -> Any:
        return handler()  # type: ignore[call-arg]
    return call


def _is_async(handler: Handler) -> bool:
    # an object with an ``async def __call__`` is an async handler too
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None))  # noqa: B004 - not a callable check


def _field(request: Any, name: str, default: Any = None) -> Any:
    if isinstance(request, dict):
        return request.get(name, default)
    return getattr(request, name, default)


def _action(value: Any) -> Action | None:
    if value is None or isinstance(value, Action):
        return value
    kind = _field(value, "type")
    if kind not in ("void", "enqueue"):
        raise ValueError(f"action must be TriggerAction.Void() or TriggerAction.Enqueue(queue=...), got {value!r}")
    return Action(type=kind, queue=_field(value, "queue"))


class III:
    """A connection to the supervisor. Create it with :func:`register_worker`."""

    def __init__(self, socket_path: str, token: str, name: str, options: InitOptions | None = None) -> None:
        self.socket_path = socket_path
        self.name = name
        self.options = options or InitOptions()
        self.worker_id: str | None = None
        self._token = token
        self._functions: dict[str, Handler] = {}
        self._async: dict[str, bool] = {}  # checked once, at registration
        self._trigger_types: dict[str, Any] = {}
        #: answers expected from the supervisor (call results, registration acks): each arrives
        #: in a one-item inbox, as the message or as the error that ended the wait
        self._waiters: dict[tuple[str, str], Inbox[Message | BaseException]] = {}
        self._readers: dict[int, ChannelReader | None] = {}
        self._writers: dict[int, ChannelWriter | None] = {}
        self._ids = itertools.count(1)
        self._stream: FramedStream | None = None
        self._nursery: trio.Nursery | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._limiter = trio.CapacityLimiter(self.options.max_threads)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._shutting_down = False
        self._ready_sent = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._thread_main, name=f"iii-worker[{name}]", daemon=False)
        self._start()

    def _start(self) -> None:
        """Connect on the loop thread; return once the supervisor has accepted us."""
        self._thread.start()
        if not self._ready.wait(self.options.connect_timeout):
            raise ConnectionLost(f"could not connect to the supervisor at {self.socket_path!r} "
                                 f"within {self.options.connect_timeout:g}s")
        if self._startup_error is not None:
            raise self._startup_error
        _attach_logger(self)  # `logger` sends here; printed lines get their handler's context
        lifetime.keep_serving_after_main(self)

    # --- the end of the main code (called by lifetime, in the main thread) --------------------

    def _wait_until_closed(self) -> None:
        self._thread.join()

    def _main_code_ended(self) -> None:
        try:
            self.ready()
        except ConnectionLost:
            pass

    def _close_at_exit(self, reason: str) -> None:
        if self._thread.is_alive() and not self._shutting_down:
            print(f"iii worker {self.name}: {reason}; closing the connection to the supervisor",
                  file=sys.stderr, flush=True)
            self.shutdown()

    # --- the loop thread ----------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread or stderr
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
                return
            print(f"iii worker {self.name}: connection loop failed: {exc!r}", file=sys.stderr, flush=True)
        if self._ready.is_set() and not self._shutting_down and self.options.exit_on_disconnect:
            print(f"iii worker {self.name}: supervisor connection closed; exiting", file=sys.stderr, flush=True)
            os._exit(0)

    async def _main(self) -> None:
        try:
            stream = await trio.open_unix_socket(self.socket_path)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to the supervisor socket {self.socket_path!r}: {exc}") from None
        await self._serve_stream(stream)

    async def _serve_stream(self, stream: trio.SocketStream, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Handshake, then serve the connection until it ends (``task_status`` once accepted)."""
        framed = FramedStream(stream)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._stream = framed
            await nursery.start(framed.run_writer)
            framed.send_nowait(Hello(token=self._token, name=self.name, pid=os.getpid()))
            first = await framed.receive()
            if isinstance(first, Error):
                raise error_from_wire(first.error.code, first.error.message)
            if not isinstance(first, WorkerRegistered):
                raise ProtocolError(f"expected 'workerregistered' from the supervisor, got {first!r}")
            self.worker_id = first.worker_id
            if first.max_frame_size:  # the supervisor's limit: an oversize result fails one call, not the link
                framed.max_frame_size = first.max_frame_size
            self._trio_token = trio.lowlevel.current_trio_token()
            self._ready.set()
            task_status.started()
            try:
                async for batch in framed.batches():
                    for event in batch:
                        self._dispatch(event)
                self._supervisor_gone()
            except (ConnectionLost, ProtocolError) as exc:
                log.warning("connection to the supervisor failed: %s", exc)
                self._supervisor_gone()
            finally:
                lost = ConnectionLost("the connection to the supervisor was closed")
                for waiter in self._waiters.values():
                    waiter.put(lost)
                self._waiters.clear()
                nursery.cancel_scope.cancel()

    def _supervisor_gone(self) -> None:
        """The connection ended and we did not close it: exit now (with ``exit_on_disconnect``),
        not once the loop has unwound — a sync handler's thread cannot be cancelled, and a
        worker in a long handler must not outlive its supervisor."""
        if not self._shutting_down and self.options.exit_on_disconnect:
            try:  # our output pipes were the supervisor's: writing may fail with EPIPE now
                print(f"iii worker {self.name}: supervisor connection closed; exiting", file=sys.stderr, flush=True)
                sys.stdout.flush()
            except BaseException:  # noqa: BLE001, S110 - nothing may stand between us and the exit
                pass
            finally:
                os._exit(0)

    def _dispatch(self, event: Event) -> None:
        match event:
            case InvokeFunction():
                assert self._nursery is not None
                channels = self._open_channels(event.data)
                self._nursery.start_soon(self._serve_invocation, event, channels)
            case Chunk():
                if event.channel_id in self._readers:
                    self._reader(event.channel_id)._feed(event.data)
            case ChannelWindow():
                if event.channel_id in self._writers:
                    self._writer(event.channel_id)._grant(event.size)
            case ChannelClose():
                if event.channel_id in self._readers:
                    self._reader(event.channel_id)._end(event.error)
                if event.channel_id in self._writers:
                    self._writer(event.channel_id)._peer_closed(event.error)
            case InvocationResult():
                self._resolve(("call", event.invocation_id or ""), event)
            case FunctionRegistered():
                self._resolve(("function", event.id), event)
            case TriggerRegistrationResult():
                if not self._resolve(("trigger", event.id), event) and event.error is not None:
                    log.error("trigger %s (%s → %s) was refused: %s", event.id, event.trigger_type,
                              event.function_id, event.error.message)
            case RegisterTrigger() | UnregisterTrigger():
                assert self._nursery is not None
                self._nursery.start_soon(self._serve_trigger_binding, event)
            case Ping():
                self._send(Pong())
            case Error():
                log.error("supervisor error %s: %s", event.error.code, event.error.message)
            case _:
                pass  # channel events and pongs: nothing to do here yet

    def _resolve(self, key: tuple[str, str], message: Message) -> bool:
        waiter = self._waiters.pop(key, None)
        if waiter is None:
            return False
        waiter.put(message)
        return True

    def _send(self, message: Message | Chunk) -> None:
        if self._stream is None or self._stream.closed:
            raise ConnectionLost("not connected to the supervisor")
        self._stream.send_nowait(message)

    def _open_channels(self, data: Any) -> list[int]:
        """Note the channels a call's payload refers to *before* their frames arrive.

        The reader/writer objects are built lazily (most handlers never use them); until then a
        channel is ``None`` here, so its frames are recognised and not dropped.
        """
        if type(data) is not dict:
            return []
        opened = []
        body = ChannelRef.parse(data.get("request_body"), "read")
        if body is not None:
            self._readers[body.channel_id] = None
            opened.append(body.channel_id)
            if body.eof:  # an empty body: nothing will be sent on the channel
                self._reader(body.channel_id)._end(None)
        response = ChannelRef.parse(data.get("response"), "write")
        if response is not None:
            self._writers[response.channel_id] = None
            opened.append(response.channel_id)
        return opened

    def _reader(self, channel_id: int) -> ChannelReader:
        reader = self._readers[channel_id]
        if reader is None:
            reader = self._readers[channel_id] = ChannelReader(channel_id)
        return reader

    def _writer(self, channel_id: int) -> ChannelWriter:
        writer = self._writers[channel_id]
        if writer is None:
            assert self._nursery is not None
            writer = self._writers[channel_id] = ChannelWriter(channel_id, self._send, self._nursery.start_soon)
        return writer

    def channel_reader(self, ref: Any) -> ChannelReader:
        return self._reader(_channel_id(ref, "read"))

    def channel_writer(self, ref: Any) -> ChannelWriter:
        return self._writer(_channel_id(ref, "write"))

    async def _serve_invocation(self, msg: InvokeFunction, channels: list[int]) -> None:
        _current_client.set(self)
        enter_invocation(msg)  # function id and trace, for logger, prints and trigger()
        try:
            await self._run_invocation(msg)
        finally:
            for channel_id in channels:
                self._readers.pop(channel_id, None)
                self._writers.pop(channel_id, None)

    async def _run_invocation(self, msg: InvokeFunction) -> None:
        handler = self._functions.get(msg.function_id)
        result: Any = None
        error: ErrorBody | None = None
        if handler is None:
            error = ErrorBody(code="function_not_found",
                              message=f"function {msg.function_id!r} is not registered in worker {self.name!r}")
        else:
            try:
                if self._async.get(msg.function_id, False):
                    result = await handler(msg.data)
                else:
                    result = await trio.to_thread.run_sync(partial(handler, msg.data), limiter=self._limiter)
            except Exception as exc:
                error = ErrorBody(code="invocation_failed", message=str(exc) or type(exc).__name__,
                                  stacktrace=traceback.format_exc())
                if msg.invocation_id is None:
                    log.error("void call to %s failed:\n%s", msg.function_id, error.stacktrace)
        if msg.invocation_id is None:
            return
        try:
            self._send(InvocationResult(invocation_id=msg.invocation_id, function_id=msg.function_id,
                                        result=result, error=error))
        except (TypeError, ProtocolError) as exc:  # not JSON-serializable, or over the frame limit
            self._send(InvocationResult(invocation_id=msg.invocation_id, function_id=msg.function_id,
                                        error=ErrorBody(code="invocation_failed",
                                                        message=f"result of {msg.function_id!r} cannot be sent: "
                                                                f"{exc}")))
        except ConnectionLost:
            pass

    async def _serve_trigger_binding(self, msg: RegisterTrigger | UnregisterTrigger) -> None:
        provider = self._trigger_types.get(msg.trigger_type or "")
        if provider is None:
            return
        try:
            if isinstance(msg, RegisterTrigger):
                await provider.register_trigger(TriggerConfig(msg.id, msg.function_id, msg.config or {}, msg.metadata))
            else:
                await provider.unregister_trigger(TriggerConfig(msg.id, "", {}))
        except Exception as exc:
            if isinstance(msg, RegisterTrigger):
                self._send(TriggerRegistrationResult(id=msg.id, trigger_type=msg.trigger_type,
                                                     function_id=msg.function_id,
                                                     error=ErrorBody(code="trigger_registration_failed",
                                                                     message=str(exc))))
            else:
                log.exception("unregistering trigger %s failed", msg.id)

    # --- thread plumbing ----------------------------------------------------------------------

    def _in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def _run(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``afn(*args)`` on the loop and block this (non-loop) thread for its result."""
        if self._in_loop():
            raise RuntimeError(
                "this iii call blocks, and you are inside an async handler on the worker's event loop; "
                "use the async form instead (e.g. 'await iii.trigger_async(...)')")
        if self._trio_token is None:
            raise ConnectionLost("not connected to the supervisor")
        self._check_process()
        try:
            return trio.from_thread.run(afn, *args, trio_token=self._trio_token)
        except trio.RunFinishedError:
            raise ConnectionLost("the connection to the supervisor was closed") from None

    def _check_process(self) -> None:
        if os.getpid() != self._pid:  # a fork (e.g. a multiprocessing pool's process): no loop here
            raise ConnectionLost(f"this iii client is connected in process {self._pid}; a child process "
                                 f"({os.getpid()}) cannot use it")

    def _send_threadsafe(self, message: Message) -> None:
        if self._in_loop():
            self._send(message)
        elif self._trio_token is not None:
            self._check_process()
            try:
                trio.from_thread.run_sync(self._send, message, trio_token=self._trio_token)
            except trio.RunFinishedError:
                raise ConnectionLost("the connection to the supervisor was closed") from None

    async def _request(self, key: tuple[str, str], message: Message, timeout: float,
                       timeout_error: EngineError | None = None) -> Message:
        """Send ``message`` and wait for the answer filed under ``key``, at most ``timeout`` seconds."""
        waiter: Inbox[Message | BaseException] = Inbox()
        self._waiters[key] = waiter
        try:
            self._send(message)
            with trio.fail_after(timeout):
                answer = await waiter.get()
        except trio.TooSlowError:
            raise timeout_error or EngineError(f"no answer from the supervisor within {timeout:g}s",
                                               code="timeout") from None
        finally:
            self._waiters.pop(key, None)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    # --- functions ----------------------------------------------------------------------------

    def register_function(self, function: Any, handler: Handler | Any = None, *, description: str | None = None,
                          metadata: dict[str, Any] | None = None) -> FunctionRef:
        """Register ``handler`` (sync or async; one argument, the payload, or none) under an id.

        ``function`` is ``"users.create"`` or ``{"id": "users.create", "description": ...}``.
        Instead of a handler, an :class:`~.external.HttpInvocationConfig` (or the dict
        ``{"url": ..., ...}``, or ``{"id": ..., "invocation": {...}}`` as ``function``) registers an
        *external* function: the supervisor serves its calls by calling that URL.
        Raises :class:`~iii_supervisor.errors.FunctionConflict` if another worker owns the id,
        :class:`~iii_supervisor.errors.InvalidInvocation` naming a bad invocation field.
        """
        function_id, extra = _function_id(function)
        if handler is None and "invocation" in extra:
            invocation = invocation_wire(extra["invocation"]) or extra["invocation"]
            if not isinstance(invocation, dict):
                raise TypeError(f"'invocation' of {function_id!r} must be a dict or an HttpInvocationConfig, "
                                f"got {invocation!r}")
        else:
            invocation = invocation_wire(handler)
        if invocation is None and not callable(handler):
            raise TypeError(f"handler for {function_id!r} must be callable or an HttpInvocationConfig, got {handler!r}")
        msg = RegisterFunction(id=function_id, description=description or extra.get("description"),
                               metadata=metadata or extra.get("metadata"),
                               request_format=extra.get("request_format"), response_format=extra.get("response_format"),
                               invocation=invocation)
        if invocation is None:
            self._functions[function_id] = _without_argument(handler)
            self._async[function_id] = _is_async(handler)
        else:  # served by the supervisor: nothing runs here
            self._functions.pop(function_id, None)
        if self._in_loop():
            self._send(msg)  # cannot wait for the ack here; a refusal is logged
            return FunctionRef(function_id, self)
        try:
            ack = self._run(self._request, ("function", function_id), msg, REGISTRATION_TIMEOUT)
        except BaseException:
            self._functions.pop(function_id, None)
            raise
        assert isinstance(ack, FunctionRegistered)
        if ack.error is not None:
            self._functions.pop(function_id, None)
            raise error_from_wire(ack.error.code, ack.error.message)
        return FunctionRef(function_id, self)

    def _unregister_function(self, function_id: str) -> None:
        self._functions.pop(function_id, None)
        self._send_threadsafe(UnregisterFunction(id=function_id))

    # --- triggers -----------------------------------------------------------------------------

    def register_trigger(self, trigger: Any) -> Trigger:
        """Bind a trigger: ``{"type": "http", "function_id": fn.id, "config": {...}}``.

        Raises :class:`~iii_supervisor.errors.TriggerRegistrationError` when the supervisor
        refuses it (unknown type, bad config, route clash …).
        """
        trigger_type = _field(trigger, "type") or _field(trigger, "trigger_type")
        function_id = _field(trigger, "function_id")
        config = _field(trigger, "config") or {}
        if not isinstance(trigger_type, str) or not isinstance(function_id, str):
            raise TypeError(f"a trigger needs a str 'type' and a str 'function_id', got {trigger!r}")
        if not isinstance(config, dict):
            raise TypeError(f"trigger 'config' must be a dict, got {config!r}")
        trigger_id = _field(trigger, "id") or uuid.uuid4().hex
        msg = RegisterTrigger(id=trigger_id, trigger_type=trigger_type, function_id=function_id, config=config,
                              metadata=_field(trigger, "metadata"))
        handle = Trigger(trigger_id, trigger_type, function_id, self)
        if self._in_loop():
            self._send(msg)
            return handle
        ack = self._run(self._request, ("trigger", trigger_id), msg, REGISTRATION_TIMEOUT)
        assert isinstance(ack, TriggerRegistrationResult)
        if ack.error is not None:
            raise error_from_wire(ack.error.code, ack.error.message)
        return handle

    def register_trigger_type(self, trigger_type: Any, handler: Any) -> TriggerTypeRef:
        """Provide a trigger type; ``handler`` has ``async register_trigger(TriggerConfig)`` and
        ``async unregister_trigger(TriggerConfig)``. Fire bindings with ``trigger(...)``."""
        type_id = _field(trigger_type, "id")
        if not isinstance(type_id, str):
            raise TypeError(f"a trigger type needs a str 'id', got {trigger_type!r}")
        self._trigger_types[type_id] = handler
        self._send_threadsafe(RegisterTriggerType(id=type_id, description=_field(trigger_type, "description") or ""))
        return TriggerTypeRef(type_id, self)

    # --- calls --------------------------------------------------------------------------------

    def trigger(self, request: Any) -> Any:
        """Call a function: ``{"function_id", "payload"?, "action"?, "timeout_ms"?}``.

        Without an action, waits for and returns the result (raising the call's error);
        with ``TriggerAction.Void()`` returns ``None`` at once.
        """
        return self._run(self.trigger_async, request)

    async def trigger_async(self, request: Any) -> Any:
        function_id = _field(request, "function_id")
        if not isinstance(function_id, str):
            raise TypeError(f"trigger() needs a str 'function_id', got {request!r}")
        action = _action(_field(request, "action"))
        timeout_ms = _field(request, "timeout_ms") or self.options.invocation_timeout_ms
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms <= 0:
            raise ValueError(f"trigger() 'timeout_ms' must be a positive integer (milliseconds), got {timeout_ms!r}")
        data = _field(request, "payload", _field(request, "data"))
        # inside a handler, the call continues the handler's trace
        traceparent, baggage = outgoing_context(_field(request, "traceparent"), _field(request, "baggage"))
        if action is not None and action.type == "void":
            self._send(InvokeFunction(function_id=function_id, data=data, metadata=_field(request, "metadata"),
                                      traceparent=traceparent, baggage=baggage))
            return None
        inv_id = str(next(self._ids))
        msg = InvokeFunction(function_id=function_id, data=data, invocation_id=inv_id, action=action,
                             timeout_ms=timeout_ms, metadata=_field(request, "metadata"),
                             traceparent=traceparent, baggage=baggage)
        # The supervisor enforces timeout_ms and answers invocation_timeout; our own deadline, a
        # margin later, only fires if that answer is lost, so that no worker can hang on a call.
        margin = self.options.trigger_deadline_margin
        deadline = timeout_ms / 1000 + margin
        lost = InvocationTimeout(f"no answer for function {function_id!r} within {deadline:g}s (its timeout_ms "
                                 f"{timeout_ms} plus a {margin:g}s margin): the supervisor's answer was lost")
        answer = await self._request(("call", inv_id), msg, deadline, lost)
        assert isinstance(answer, InvocationResult)
        if answer.error is not None:
            raise error_from_wire(answer.error.code, answer.error.message, answer.error.stacktrace)
        return answer.result

    # --- lifecycle ----------------------------------------------------------------------------

    def ready(self) -> None:
        """Tell the supervisor this worker has finished starting: it now counts as ``running``
        (until then ``starting``, and restarted after ``start_timeout``). Sent by itself when the
        script's main code ends; call it when the main code goes on running (a loop of its own)."""
        if not self._ready_sent:
            self._ready_sent = True
            self._send_threadsafe(WorkerReady())

    def shutdown(self) -> None:
        """Close the connection and stop the loop thread (the process may then exit)."""
        self._shutting_down = True
        lifetime.forget(self)
        if self._in_loop():
            raise RuntimeError("use 'await iii.shutdown_async()' inside an async handler")
        if self._trio_token is not None and self._thread.is_alive():
            try:
                trio.from_thread.run(self.shutdown_async, trio_token=self._trio_token)
            except trio.RunFinishedError:
                pass
        self._thread.join()

    async def shutdown_async(self) -> None:
        self._shutting_down = True
        if self._stream is not None:
            await self._stream.flush()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


def register_worker(address: str | None = None, options: InitOptions | dict[str, Any] | None = None) -> III:
    """Connect this process to the supervisor that spawned it and return the client.

    ``address`` defaults to ``$III_SOCKET``; the token comes from ``$III_WORKER_TOKEN`` and the
    name from ``options.worker_name`` or ``$III_WORKER_NAME``.
    """
    if isinstance(options, dict):
        options = InitOptions(**options)
    options = options or InitOptions()
    socket_path = address or os.environ.get("III_SOCKET")
    token = os.environ.get("III_WORKER_TOKEN")
    if not socket_path or not token:
        raise EngineError(
            "III_SOCKET / III_WORKER_TOKEN are not set: run this worker under the supervisor "
            "('iii-supervisor start DIR' spawns every worker program in DIR)", code="not_supervised")
    name = options.worker_name or os.environ.get("III_WORKER_NAME") or f"worker-{os.getpid()}"
    if lifetime.in_multiprocessing_child():
        # a spawn/forkserver pool re-imports the worker script in its processes: the worker
        # itself is connected already, this copy only needs the script's functions defined
        return _UnconnectedIII(socket_path, token, name, options)
    return III(socket_path, token, name, options)


class _UnconnectedIII(III):
    """What ``register_worker()`` returns in a ``multiprocessing`` child: registrations are kept
    locally (so the script runs as usual), nothing is sent; calls raise."""

    def _start(self) -> None:
        pass

    def _run(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        raise ConnectionLost(f"this process ({os.getpid()}) is a multiprocessing child of worker {self.name!r}; "
                             f"only the worker process itself is connected to the supervisor")

    def _send_threadsafe(self, message: Message) -> None:
        pass

    def register_function(self, function: Any, handler: Handler | Any = None, *, description: str | None = None,
                          metadata: dict[str, Any] | None = None) -> FunctionRef:
        function_id, _ = _function_id(function)
        if callable(handler):
            self._functions[function_id] = handler
        return FunctionRef(function_id, self)

    def register_trigger(self, trigger: Any) -> Trigger:
        return Trigger(_field(trigger, "id") or uuid.uuid4().hex, _field(trigger, "type") or "",
                       _field(trigger, "function_id") or "", self)

    def shutdown(self) -> None:
        pass


__all__ = ["III", "FunctionRef", "InitOptions", "RegistrationError", "Trigger", "TriggerConfig", "TriggerTypeRef",
           "register_worker"]
