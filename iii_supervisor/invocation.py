"""Routing of calls: pending invocations, deadlines, results, and failure on worker exit.

Theory of operation
-------------------
A call to a worker-owned function gets a fresh engine invocation id and a :class:`Pending`
entry, and is forwarded to the owner's session. The entry remembers where the answer goes:

- *relay*: the caller is another worker; its ``invocationresult`` is sent back on the caller's
  session under the caller's own invocation id. No task is spawned per call: the relay is
  two dictionary operations and two queued frames, which is what keeps routed calls cheap.
- *local*: the caller is in-process (control socket, HTTP front, cron …) and awaits
  :meth:`Invoker.call`; the entry holds a ``trio.Event``.

Deadlines live in one heap served by one timer task (:class:`~.deadlines.Deadlines`), so a call
that nobody answers fails with
``invocation_timeout`` (default 30 s, per call ``timeout_ms``). When a session closes,
:meth:`Invoker.session_closed` fails every call it was executing with ``invocation_stopped`` at
once and forgets the calls it had started (their late results are dropped).
"""

from __future__ import annotations

import itertools
import logging
import math
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .deadlines import Deadlines
from .errors import (
    EngineError,
    FunctionNotFound,
    InvocationError,
    InvocationFailed,
    InvocationStopped,
    InvocationTimeout,
    LocalProtocolError,
    WorkerOverloaded,
    error_from_wire,
)
from .inbox import Inbox
from .protocol import Action, ErrorBody, InvocationResult, InvokeFunction
from .ratelimit import RateLimitedLog
from .registry import ActionCall, FunctionEntry, Owner, Registry
from .stats import InvocationStats
from .tracing import CallContext, calling, ensure_traceparent

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
#: Calls to a worker with more than this queued for it fail at once with ``worker_overloaded``.
DEFAULT_MAX_BACKLOG = 64 * 1024 * 1024
#: ... and the supervisor says so at most this often per worker (seconds).
_OVERLOAD_LOG_INTERVAL = 10.0
#: repeated per-call warnings: one line per kind and peer per this many seconds, then a count
WARNING_INTERVAL = 10.0


#: a connected session, as the invoker sees it (the owner of the functions it calls)
Peer = Owner


@attrs.define(eq=False, slots=True)
class Pending:
    id: str
    function_id: str
    target: Peer
    deadline: float
    caller: Peer | None = None
    caller_invocation_id: str | None = None
    done: trio.Event | None = None
    outcome: InvocationResult | None = None
    #: instead of ``done``: the result is put into this inbox (the HTTP front's response channel,
    #: so one task reads both, in the order the worker sent them)
    notify: Inbox[Any] | None = None
    #: when the call was routed (for the duration histogram; set by whoever builds it)
    started: float = 0.0



class Invoker:
    def __init__(self, registry: Registry, *, default_timeout: float = DEFAULT_TIMEOUT,
                 max_backlog: int = DEFAULT_MAX_BACKLOG) -> None:
        self.registry = registry
        #: calls, errors and durations per function (for /metrics)
        self.stats = InvocationStats()
        self._turn = 0
        self.default_timeout = default_timeout
        self.max_backlog = max_backlog
        self._overload_logged: dict[str, float] = {}
        self.pending: dict[str, Pending] = {}
        self._ids = itertools.count(1)
        self._deadlines: Deadlines[str] = Deadlines(self._expire, self._deadline_current)
        #: warnings a caller can repeat at will (a worker calling in a loop) are rate-limited
        self._warnings = RateLimitedLog(log, WARNING_INTERVAL)
        self._nursery: trio.Nursery | None = None
        #: engine invocation ids each peer is executing, and those it started (relayed calls)
        self._executing: dict[Peer, set[str]] = {}
        self._started: dict[Peer, set[str]] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve deadlines and own the tasks of in-process calls. Runs until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._warnings.run)
            await nursery.start(self._deadlines.run)
            self._nursery = nursery
            task_status.started()

    def _deadline_current(self, inv_id: str, when: float) -> bool:
        pending = self.pending.get(inv_id)
        return pending is not None and pending.deadline <= when  # (a cleared deadline is inf)

    def _expire(self, inv_id: str, when: float) -> None:
        if self._deadline_current(inv_id, when):
            pending = self.pending[inv_id]
            timeout = InvocationTimeout(f"function {pending.function_id!r} did not answer in time")
            self._finish(pending, InvocationResult(invocation_id=inv_id, function_id=pending.function_id,
                                                   error=ErrorBody.of(timeout)))

    def _timeout_of(self, msg: InvokeFunction) -> float:
        if msg.timeout_ms is not None and msg.timeout_ms > 0:
            return msg.timeout_ms / 1000
        return self.default_timeout

    # --- calls from workers (relay) -----------------------------------------------------------

    def route(self, caller: Peer, msg: InvokeFunction) -> None:
        """Handle an ``invokefunction`` sent by a worker. Never blocks."""
        action = msg.action
        if action is not None and action.type != "void":  # enqueue …: whichever module serves it
            self._route_action(caller, msg, action)
            return
        entry = self.registry.lookup(msg.function_id)
        if entry is None:
            self._answer(caller, msg, error=FunctionNotFound(f"function {msg.function_id!r} not found"))
            return
        if entry.builtin is not None:
            assert self._nursery is not None, "Invoker.run is not running"
            self._nursery.start_soon(self._relay_task, caller, msg, "built-in", entry.builtin, msg.data)
            return
        target = self._pick(entry)
        overloaded = self._overloaded(target)
        if overloaded is not None:
            self._answer(caller, msg, error=overloaded)
            return
        if msg.invocation_id is None:  # void: fire and forget, no pending entry
            try:
                target.send_nowait(InvokeFunction(function_id=msg.function_id, data=msg.data, metadata=msg.metadata,
                                                  traceparent=ensure_traceparent(msg.traceparent),
                                                  baggage=msg.baggage))
            except LocalProtocolError as exc:
                self._warnings.warning(("void call dropped", caller.name), "void call from %s to %r dropped: %s",
                                       caller.name, msg.function_id, exc.message)
            return
        inv_id = str(next(self._ids))
        now = trio.current_time()
        pending = Pending(inv_id, msg.function_id, target, now + self._timeout_of(msg),
                          caller=caller, caller_invocation_id=msg.invocation_id, started=now)
        self._start(pending, InvokeFunction(
            function_id=msg.function_id, data=msg.data, invocation_id=inv_id, metadata=msg.metadata,
            traceparent=ensure_traceparent(msg.traceparent), baggage=msg.baggage))

    def _route_action(self, caller: Peer, msg: InvokeFunction, action: Action) -> None:
        handler = self.registry.action_handler(action.type)
        if handler is None:
            target = f" into queue {action.queue!r}" if action.queue is not None else ""
            self._answer(caller, msg, error=InvocationError(
                f"cannot {action.type} the call to {msg.function_id!r}{target}: no module serves "
                f"{action.type!r} actions", code=f"{action.type}_error"))
            return
        assert self._nursery is not None, "Invoker.run is not running"
        call = ActionCall(function_id=msg.function_id, data=msg.data, action=action, metadata=msg.metadata,
                          traceparent=msg.traceparent, baggage=msg.baggage, caller=caller.name)
        self._nursery.start_soon(self._relay_task, caller, msg, f"{action.type} action", handler, call)

    def _pick(self, entry: FunctionEntry) -> Peer:
        """The owner to send a call of ``entry`` to: its owner, or, when several instances of a
        worker registered it, the one with the fewest calls in flight (ties: in turn)."""
        owner = entry.owner
        assert owner is not None  # (built-ins have no owner and are served inline)
        if not entry.replicas:
            return owner
        candidates = [owner, *entry.replicas]
        self._turn += 1
        start = self._turn % len(candidates)
        executing = self._executing
        best, best_load = owner, -1
        for i in range(len(candidates)):
            peer = candidates[(start + i) % len(candidates)]
            load = len(executing.get(peer, ()))
            if best_load < 0 or load < best_load:
                best, best_load = peer, load
        return best

    def _overloaded(self, target: Peer) -> WorkerOverloaded | None:
        """Refuse calls to a worker that stopped reading (stopped, or blocking its event loop):
        queueing more would only grow our memory with calls that time out before it reads them."""
        backlog = target.backlog()
        if backlog <= self.max_backlog:
            return None
        now = trio.current_time()
        if now - self._overload_logged.get(target.name, -math.inf) >= _OVERLOAD_LOG_INTERVAL:
            self._overload_logged[target.name] = now
            log.warning("worker %s is not reading its socket: %d bytes queued for it (limit %d); "
                        "calls to it fail with worker_overloaded", target.name, backlog, self.max_backlog)
        return WorkerOverloaded(f"worker {target.name!r} is not keeping up: {backlog} bytes are queued for it "
                                f"(limit {self.max_backlog}); is it stopped or blocking its event loop?")

    def _answer(self, caller: Peer, msg: InvokeFunction, *, result: Any = None,
                error: EngineError | None = None) -> None:
        if msg.invocation_id is None:
            if error is not None:
                self._warnings.warning(("void call failed", caller.name), "void call from %s to %r failed: %s",
                                   caller.name, msg.function_id, error)
            return
        self._send_result(caller, InvocationResult(invocation_id=msg.invocation_id, function_id=msg.function_id,
                                                   result=result, error=ErrorBody.of(error) if error else None))

    def _send_result(self, caller: Peer, result: InvocationResult) -> None:
        """Send ``result`` to ``caller``; one that cannot be encoded for it (over its frame limit)
        fails that one call with ``result_too_large`` — a local failure, the peers stay connected.
        Never raises: it runs where an exception would end a timer, a session's cleanup or the
        invoker's nursery."""
        try:
            caller.send_nowait(result)
            return
        except LocalProtocolError as exc:
            problem = exc.message
        self._warnings.warning(("result too large", caller.name), "result of %r for %s cannot be sent: %s",
                               result.function_id, caller.name, problem)
        try:
            caller.send_nowait(InvocationResult(
                invocation_id=result.invocation_id, function_id=result.function_id,
                error=ErrorBody(code="result_too_large",
                                message=f"the result of {result.function_id!r:.200} cannot be sent to "
                                        f"{caller.name!r}: {problem}")))
        except LocalProtocolError:  # not even the error fits (a tiny frame limit): the caller's deadline ends it
            pass

    async def _relay_task(self, caller: Peer, msg: InvokeFunction, what: str,
                          handler: Callable[[Any], Awaitable[Any]], data: Any) -> None:
        try:
            with calling(CallContext(caller.name, ensure_traceparent(msg.traceparent), msg.baggage)):
                result = await self._run_inline(msg.function_id, what, handler, data, self._timeout_of(msg))
        except EngineError as exc:
            self._answer(caller, msg, error=exc)
        else:
            self._answer(caller, msg, result=result)

    async def _run_inline(self, function_id: str, what: str, handler: Callable[[Any], Awaitable[Any]], data: Any,
                          timeout: float) -> Any:
        """Run an in-process handler (a built-in function, an action) under the call's deadline."""
        try:
            # a bare scope: fail_after's generator-based context manager costs a third more per call
            with trio.CancelScope(deadline=trio.current_time() + timeout):
                return await handler(data)
            raise InvocationTimeout(f"function {function_id!r} did not answer in time")  # (the scope expired)
        except EngineError:
            raise
        except Exception as exc:  # a module's bug must not take the engine down
            log.exception("%s of %s failed", what, function_id)
            raise InvocationFailed(f"{function_id}: {type(exc).__name__}: {exc}",
                                   stacktrace=traceback.format_exc()) from exc

    def _start(self, pending: Pending, outgoing: InvokeFunction) -> None:
        """Track ``pending`` and send ``outgoing`` (which carries ``pending.id``) to its target."""
        self.pending[pending.id] = pending
        self._executing.setdefault(pending.target, set()).add(pending.id)
        if pending.caller is not None:
            self._started.setdefault(pending.caller, set()).add(pending.id)
        self._deadlines.add(pending.deadline, pending.id)
        try:
            pending.target.send_nowait(outgoing)
        except LocalProtocolError as exc:  # the call cannot be encoded for the target: fail it alone
            self._finish(pending, InvocationResult(invocation_id=pending.id, function_id=pending.function_id,
                                                   error=ErrorBody(code="request_too_large", message=(
                                                       f"the call to {pending.function_id!r} cannot be sent to "
                                                       f"{pending.target.name!r}: {exc.message}"))))

    # --- results ------------------------------------------------------------------------------

    def on_result(self, sender: Peer, msg: InvocationResult) -> None:
        """Handle an ``invocationresult`` sent by the worker that executed the call."""
        pending = self.pending.get(msg.invocation_id or "")
        if pending is None or pending.target is not sender:
            return  # late (timed out / caller gone) or forged: drop
        self._finish(pending, msg)

    def _finish(self, pending: Pending, result: InvocationResult) -> None:
        del self.pending[pending.id]
        self.stats.record(pending.function_id, result.error.code if result.error is not None else None,
                          trio.current_time() - pending.started)
        self._discard(self._executing, pending.target, pending.id)
        if pending.caller is not None:
            self._discard(self._started, pending.caller, pending.id)
            self._send_result(pending.caller, InvocationResult(
                invocation_id=pending.caller_invocation_id, function_id=pending.function_id,
                result=result.result, error=result.error))
        else:
            self._deliver_local(pending, result)

    @staticmethod
    def _deliver_local(pending: Pending, result: InvocationResult) -> None:
        if pending.done is not None:
            pending.outcome = result
            pending.done.set()
        elif pending.notify is not None:
            pending.notify.put(result)

    @staticmethod
    def _discard(table: dict[Peer, set[str]], peer: Peer, inv_id: str) -> None:
        ids = table.get(peer)
        if ids is not None:
            ids.discard(inv_id)
            if not ids:
                del table[peer]

    def executing(self, peer: Peer) -> frozenset[str]:
        """Engine invocation ids of the calls ``peer`` is executing now."""
        return frozenset(self._executing.get(peer, ()))

    def started_by(self, peer: Peer) -> frozenset[str]:
        """Engine invocation ids of the calls ``peer`` made that are still running."""
        return frozenset(self._started.get(peer, ()))

    def in_flight(self, peer: Peer) -> int:
        """How many calls ``peer`` is executing now."""
        return len(self._executing.get(peer, ()))

    def session_closed(self, peer: Peer) -> None:
        """``peer`` is gone: fail what it was executing, forget what it had started."""
        for inv_id in list(self._executing.get(peer, ())):
            pending = self.pending.get(inv_id)
            if pending is not None:
                stopped = InvocationStopped(
                    f"worker {peer.name!r} stopped while executing {pending.function_id!r}")
                self._finish(pending, InvocationResult(invocation_id=inv_id, function_id=pending.function_id,
                                                       error=ErrorBody.of(stopped)))
        self._executing.pop(peer, None)
        for inv_id in self._started.pop(peer, ()):
            pending = self.pending.pop(inv_id, None)
            if pending is not None:
                self._discard(self._executing, pending.target, inv_id)

    # --- calls from inside the engine ---------------------------------------------------------

    async def call(self, function_id: str, data: Any = None, *, timeout: float | None = None,
                   metadata: dict[str, Any] | None = None, traceparent: str | None = None,
                   baggage: str | None = None) -> Any:
        """Call a function and return its result, raising an :class:`InvocationError` subclass."""
        timeout = self.default_timeout if timeout is None else timeout
        entry = self.registry.lookup(function_id)
        if entry is None:
            raise FunctionNotFound(f"function {function_id!r} not found")
        if entry.builtin is not None:
            with calling(CallContext("", ensure_traceparent(traceparent), baggage)):
                return await self._run_inline(entry.id, "built-in", entry.builtin, data, timeout)
        outcome = await self.wait(self.start_local(entry, data, timeout=timeout, metadata=metadata,
                                                   traceparent=traceparent, baggage=baggage))
        if outcome.error is not None:
            err = outcome.error
            raise error_from_wire(err.code, err.message, err.stacktrace)
        return outcome.result

    def start_local(self, entry: FunctionEntry, data: Any, *, timeout: float,
                    metadata: dict[str, Any] | None = None,
                    notify: Inbox[Any] | None = None, traceparent: str | None = None,
                    baggage: str | None = None) -> Pending:
        """Send a call to the worker owning ``entry``.

        The answer comes from :meth:`wait`, or, with ``notify``, as an ``InvocationResult`` put
        into that inbox.
        """
        assert entry.owner is not None, "built-ins are called with call()"
        inv_id = str(next(self._ids))
        now = trio.current_time()
        pending = Pending(inv_id, entry.id, self._pick(entry), now + timeout,
                          done=None if notify is not None else trio.Event(), notify=notify, started=now)
        overloaded = self._overloaded(pending.target)
        if overloaded is not None:  # answered at once, never sent
            self._deliver_local(pending, InvocationResult(invocation_id=inv_id, function_id=entry.id,
                                                          error=ErrorBody.of(overloaded)))
            return pending
        self._start(pending, InvokeFunction(function_id=entry.id, data=data, invocation_id=inv_id, metadata=metadata,
                                            traceparent=ensure_traceparent(traceparent), baggage=baggage))
        return pending

    async def wait(self, pending: Pending) -> InvocationResult:
        """The answer to a :meth:`start_local` call (an error result on timeout or worker exit)."""
        assert pending.done is not None
        try:
            await pending.done.wait()
        finally:
            if pending.outcome is None:  # cancelled: forget the call
                self.forget(pending)
        assert pending.outcome is not None
        return pending.outcome

    def clear_deadline(self, pending: Pending) -> None:
        """Let ``pending`` run without a deadline (an HTTP response that started streaming)."""
        pending.deadline = math.inf

    def forget(self, pending: Pending) -> None:
        """Stop waiting for ``pending``; a late answer is dropped."""
        if self.pending.pop(pending.id, None) is not None:
            self._discard(self._executing, pending.target, pending.id)
