"""The middle test level: the engine's parts in this process, workers as fakes over socket pairs.

No subprocess and no sleep-polling: a :class:`FakeWorker` speaks the real wire protocol (the same
``FramedStream`` and codec as the SDK) to a real :class:`~iii_supervisor.session.Session` over a
``socketpair``, and its handlers are plain ``async`` functions of the test. Modules run as the
engine runs them (``nursery.start(module.run)``) with a :class:`~iii_supervisor.modules.base.ModuleContext`.

    async with engine_parts(modules=[http.SPEC]) as parts:
        worker = await parts.worker("w")
        await worker.register_function("w.echo", echo)
        assert await parts.invoker.call("w.echo", 1) == 1
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from iii_supervisor.channels import ChannelTable
from iii_supervisor.config import Config, parse_config
from iii_supervisor.errors import EngineError, error_from_wire
from iii_supervisor.invocation import Invoker
from iii_supervisor.modules.base import Module, ModuleContext, ModuleSpec
from iii_supervisor.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    ErrorBody,
    Event,
    FunctionRegistered,
    InvocationResult,
    InvokeFunction,
    Message,
    RegisterFunction,
    RegisterTrigger,
    TriggerRegistrationResult,
    UnregisterTrigger,
)
from iii_supervisor.registry import Registry
from iii_supervisor.session import Session
from iii_supervisor.transport import FramedStream
from iii_supervisor.worker_lines import WorkerLines

Handler = Callable[[Any], Awaitable[Any]]


class FakeWorker:
    """The worker end of a socket pair: registers, answers calls with test handlers, calls out."""

    def __init__(self, name: str, framed: FramedStream, session: Session) -> None:
        self.name = name
        self.framed = framed
        #: the engine's side of the connection (close it to simulate the worker's exit)
        self.session = session
        self.handlers: dict[str, Handler] = {}
        #: every event the engine sent us, in order
        self.received: list[Event] = []
        self._waiters: dict[tuple[str, str], trio.MemorySendChannel[Message]] = {}
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._arrived = trio.Event()

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.framed.run_writer)
            task_status.started()
            try:
                async for event in self.framed.events():
                    self.received.append(event)
                    self._arrived.set()
                    self._arrived = trio.Event()
                    self._dispatch(event)
            except EngineError:
                pass  # the engine closed the connection
            nursery.cancel_scope.cancel()

    async def wait_for(self, predicate: Callable[[Event], bool], *, start: int = 0) -> Event:
        """The first event received for which ``predicate`` is true, looking from the ``start``-th
        received event on (``start=len(worker.received)``: only what arrives from now)."""
        seen = start
        while True:
            for event in self.received[seen:]:
                if predicate(event):
                    return event
            seen = len(self.received)
            await self._arrived.wait()

    def _dispatch(self, event: Event) -> None:
        match event:
            case InvokeFunction():
                assert self._nursery is not None
                self._nursery.start_soon(self._run, event)
            case InvocationResult():
                self._resolve(("call", event.invocation_id or ""), event)
            case FunctionRegistered():
                self._resolve(("function", event.id), event)
            case TriggerRegistrationResult():
                self._resolve(("trigger", event.id), event)

    def _resolve(self, key: tuple[str, str], msg: Message) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is not None:
            waiter.send_nowait(msg)

    async def _run(self, msg: InvokeFunction) -> None:
        handler = self.handlers.get(msg.function_id)
        result, error = None, None
        if handler is None:
            error = ErrorBody(code="function_not_found", message=f"{msg.function_id!r} not in {self.name}")
        else:
            try:
                result = await handler(msg.data)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, as the SDK does
                error = ErrorBody(code="invocation_failed", message=str(exc) or type(exc).__name__)
        if msg.invocation_id is not None:
            self.framed.send_nowait(InvocationResult(invocation_id=msg.invocation_id, function_id=msg.function_id,
                                                     result=result, error=error))

    async def _request(self, key: tuple[str, str], msg: Message) -> Message:
        send, receive = trio.open_memory_channel[Message](1)
        self._waiters[key] = send
        self.framed.send_nowait(msg)
        return await receive.receive()

    async def register_function(self, function_id: str, handler: Handler) -> None:
        self.handlers[function_id] = handler
        ack = await self._request(("function", function_id), RegisterFunction(id=function_id))
        assert isinstance(ack, FunctionRegistered)
        if ack.error is not None:
            raise error_from_wire(ack.error.code, ack.error.message)

    async def register_trigger(self, trigger_type: str, function_id: str, config: dict[str, Any] | None = None,
                               *, trigger_id: str | None = None) -> str:
        """Bind a trigger; raises the engine's refusal (``TriggerRegistrationError``)."""
        trigger_id = trigger_id or f"{self.name}-t{next(self._ids)}"
        ack = await self._request(("trigger", trigger_id), RegisterTrigger(
            id=trigger_id, trigger_type=trigger_type, function_id=function_id, config=config or {}))
        assert isinstance(ack, TriggerRegistrationResult)
        if ack.error is not None:
            raise error_from_wire(ack.error.code, ack.error.message)
        return trigger_id

    def unregister_trigger(self, trigger_id: str) -> None:
        self.framed.send_nowait(UnregisterTrigger(id=trigger_id))

    async def call_raw(self, function_id: str, data: Any = None, **fields: Any) -> InvocationResult:
        inv_id = f"{self.name}-{next(self._ids)}"
        answer = await self._request(("call", inv_id), InvokeFunction(function_id=function_id, data=data,
                                                                      invocation_id=inv_id, **fields))
        assert isinstance(answer, InvocationResult)
        return answer

    async def call(self, function_id: str, data: Any = None, **fields: Any) -> Any:
        """Call a function through the engine as a worker does (``iii.trigger``)."""
        answer = await self.call_raw(function_id, data, **fields)
        if answer.error is not None:
            raise error_from_wire(answer.error.code, answer.error.message, answer.error.stacktrace)
        return answer.result

    async def send_raw(self, payload: bytes) -> None:
        """Send one frame with this payload, as is (to test what the engine does with bad input)."""
        self.framed.send_frame_nowait(payload)
        await trio.lowlevel.checkpoint()

    def send(self, msg: Message) -> None:
        """Send any message as is (fire and forget)."""
        self.framed.send_nowait(msg)


@attrs.define
class EngineParts:
    registry: Registry
    invoker: Invoker
    channels: ChannelTable
    config: Config
    runtime_dir: Path
    nursery: trio.Nursery
    modules: dict[str, Module] = attrs.Factory(dict)
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    _names: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    async def worker(self, name: str | None = None, *, max_frame_size: int | None = None) -> FakeWorker:
        """Connect a new fake worker (a real Session on the engine side, over a socket pair)."""
        name = name or f"w{next(self._names)}"
        limit = max_frame_size or self.max_frame_size
        ours, theirs = trio.socket.socketpair()
        engine_side = FramedStream(trio.SocketStream(ours), max_frame_size=limit)
        session = Session(engine_side, name=name, worker_id=f"{name}-1", registry=self.registry,
                          invoker=self.invoker, channels=self.channels, is_worker=True)
        worker = FakeWorker(name, FramedStream(trio.SocketStream(theirs), max_frame_size=limit), session)
        self.nursery.start_soon(session.serve)
        await self.nursery.start(worker._serve)
        return worker


@asynccontextmanager
async def engine_parts(modules: Iterable[ModuleSpec] = (), config: dict[str, Any] | None = None,
                       *, store: Any = None, worker_lines: WorkerLines | None = None) -> AsyncIterator[EngineParts]:
    """Registry, invoker and channel table, with ``modules`` built and started as the engine does.

    ``config`` is the TOML content as a dict (validated like the file). Everything is cancelled
    when the block ends.
    """
    specs = tuple(modules)
    parsed = parse_config(config or {}, modules=specs)
    registry = Registry()
    invoker = Invoker(registry, default_timeout=parsed.supervisor.invocation_timeout_ms / 1000,
                      max_backlog=parsed.supervisor.max_queued_bytes)
    channels = ChannelTable()
    with tempfile.TemporaryDirectory(prefix="iii-ip") as tmp:
        async with trio.open_nursery() as nursery:
            await nursery.start(invoker.run)
            parts = EngineParts(registry, invoker, channels, parsed, Path(tmp), nursery,
                                max_frame_size=parsed.supervisor.max_frame_size)
            context = ModuleContext(registry=registry, invoker=invoker, channels=channels, config=parsed,
                                    runtime_dir=Path(tmp), store=store, worker_lines=worker_lines)
            for spec in specs:
                module = spec.build(context, parsed.section(spec.section))
                parts.modules[spec.name] = module
                await nursery.start(module.run)
            try:
                yield parts
            finally:
                nursery.cancel_scope.cancel()
