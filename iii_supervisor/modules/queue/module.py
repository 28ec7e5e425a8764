"""The queue module: durable topics, named queues, retries, dead letters (docs/queue.md).

Theory of operation
-------------------
- **Accepting.** ``enqueue`` / ``iii::durable::publish`` (topics) and ``TriggerAction.Enqueue``
  (named queues) insert one row per lane with ``await store.write``: the caller gets its answer
  only after the group commit, which is the durability point. The message then goes into its
  lane in memory (unless the lane's memory window is full: then it stays on disk, and the lane
  is refilled from disk in id order).
- **Delivering.** A lane hands out messages up to its ``concurrency``; each goes to the invoker
  with ``start_local(..., notify=inbox)``: no task per message. One task reads every answer from
  that inbox and decides: success ⇒ ack (the row is deleted), failure ⇒ retry later or dead
  letter. Those writes are batched per pass and submitted with ``write_nowait``: nobody waits for
  them, and losing them in a crash only means a redelivery.
- **Waking.** Nothing polls. A lane is pumped when a message arrives, an answer frees a slot, a
  binding registers, or a retry falls due (one timer task sleeps until the earliest due time).
- **After a crash** every row not deleted is delivered again: in-flight deliveries are not
  recorded on disk, so nothing that was accepted can be left behind (at-least-once).
- **Subscriptions** (topic + function) are kept on disk: a subscriber whose worker is down still
  gets its copy of what is published meanwhile. One not re-registered for
  ``subscription_retention_s`` is dropped with its waiting messages.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import orjson
import trio

from ...errors import (
    EngineError,
    EnqueueError,
    InvocationError,
    TriggerRegistrationError,
)
from ...inbox import Inbox
from ...modules.base import ModuleContext
from ...protocol import ErrorBody, InvocationResult
from ...registry import ActionCall, FunctionEntry, TriggerEntry, TriggerTypeEntry
from ...tracing import call_context, child_traceparent
from ...trigger_config import condition_function_id
from . import storage
from .config import QueuesConfig
from .logic import DEFAULT_QUEUE, Lane, Message, QueueSettings, group_of, parse_settings, short_json
from .storage import LaneKey

log = logging.getLogger(__name__)

#: room for the rest of a delivery (ids, function id) in the frame that carries the data
_FRAME_OVERHEAD = 4096
#: seconds between checks of a topic lane whose function is not registered (yet)
_MISSING_FUNCTION_RECHECK = 1.0
#: the longest outcomes (acks, retries, dead letters) wait for an enqueue's commit to ride on
_OUTCOME_DELAY = 0.02
#: how often subscriptions in use are marked as seen (so a crash does not age them)
_HOUSEKEEPING_INTERVAL = 3600.0


def _now_ms() -> int:
    return int(time.time() * 1000)


@attrs.define(eq=False)
class Subscriber:
    topic: str
    function_id: str
    lane: Lane
    condition_function_id: str | None = None
    #: raw queue_config as given (stored with the subscription)
    queue_config: dict[str, Any] = attrs.field(factory=dict)
    #: ids of the live trigger bindings (several bindings share the lane)
    bindings: set[str] = attrs.field(factory=set)
    #: wall-clock ms when the last binding left (retention counts from there)
    left_ms: int | None = None


@attrs.define(eq=False, slots=True)
class _Delivery:
    key: LaneKey
    msg: Message
    condition: bool  # this call is the condition check


class QueueModule:
    def __init__(self, ctx: ModuleContext, config: QueuesConfig) -> None:
        if ctx.store is None:
            raise EngineError("the queue module needs the store", code="queue_error")
        self.registry = ctx.registry
        self.invoker = ctx.invoker
        self.store = ctx.store
        self.config = config
        self.max_data_size = ctx.config.supervisor.max_frame_size - _FRAME_OVERHEAD
        self.lanes: dict[LaneKey, Lane] = {(name, ""): Lane(name, settings) for name, settings in config.queues.items()}
        #: topic → function id → subscriber
        self.topics: dict[str, dict[str, Subscriber]] = {}
        self._subscribers: dict[LaneKey, Subscriber] = {}
        self._results: Inbox[InvocationResult] = Inbox()
        self._deliveries: dict[str, _Delivery] = {}
        self._acks: list[int] = []
        self._retries: list[tuple[int, int, int, str]] = []
        self._deads: list[tuple[int, int, str]] = []
        self._timers: list[tuple[float, LaneKey]] = []
        self._timer_scope: trio.CancelScope | None = None
        self._rechecks: set[LaneKey] = set()
        #: when the gathered outcomes are written at the latest (inf: none waiting)
        self._flush_due = math.inf
        self._refills: Inbox[LaneKey] = Inbox()
        self._refill_pending: set[LaneKey] = set()
        self._nursery: trio.Nursery | None = None
        # receipt ids: random per start + a counter (uuid4 per message cost ~4 us)
        self._receipt_prefix = uuid.uuid4().hex[:16]
        self._receipts = itertools.count(1)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.store.migrate(storage.NAMESPACE, storage.MIGRATIONS)
        await self._load()
        self.registry.add_trigger_type(TriggerTypeEntry(
            "queue", "Messages published to config.topic (durable, retried, dead-lettered)",
            _Provider(self), aliases=("durable:subscriber",)))
        self._install_functions()
        self.registry.add_action_handler("enqueue", self._enqueue_action)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._serve_results)
                await nursery.start(self._serve_timers)
                await nursery.start(self._serve_refills)
                await nursery.start(self._housekeeping)
                for key, lane in self.lanes.items():
                    if lane.backlog:
                        self._request_refill(key)
                log.info("queue: %d queue(s) [%s], %d topic subscription(s)", sum(1 for _, s in self.lanes if not s),
                         ", ".join(sorted(n for n, s in self.lanes if not s)), len(self._subscribers))
                task_status.started()
        finally:
            self._flush()
            self._touch_active()

    async def _load(self) -> None:
        now = _now_ms()
        for sub in await self.store.read(storage.subscriptions):
            if now - sub.seen_ms > self.config.subscription_retention_s * 1000:
                dropped = await self.store.write(storage.drop_subscription(sub.topic, sub.function_id))
                log.warning("queue: subscription of %r to topic %r not seen for %.1f days: dropped with %d "
                            "waiting message(s)", sub.function_id, sub.topic, (now - sub.seen_ms) / 86_400_000, dropped)
                continue
            try:
                queue_config = orjson.loads(sub.settings)
                settings = parse_settings(queue_config, where="queue_config")
            except (ValueError, orjson.JSONDecodeError):
                queue_config, settings = {}, QueueSettings()
            self._subscriber(sub.topic, sub.function_id, settings, queue_config,
                             sub.condition_function_id).left_ms = sub.seen_ms
        for key in await self.store.read(storage.live_lanes):
            lane = self.lanes.get(key)
            if lane is None:
                if key[1]:  # messages of a dropped subscription (should not happen): keep, deliver
                    self._subscriber(key[0], key[1], QueueSettings(), {}, None)
                else:
                    log.warning("queue: messages wait in queue %r, which the config no longer declares; "
                                "delivering them with the default settings", key[0])
                    self.lanes[key] = Lane(key[0], QueueSettings())
                lane = self.lanes[key]
            lane.backlog = True

    def _subscriber(self, topic: str, function_id: str, settings: QueueSettings, queue_config: dict[str, Any],
                    condition: str | None) -> Subscriber:
        key = (topic, function_id)
        sub = self._subscribers.get(key)
        if sub is None:
            lane = Lane(f"{topic} → {function_id}", settings, function_id=function_id)
            self.lanes[key] = lane
            sub = Subscriber(topic, function_id, lane, condition, queue_config)
            self._subscribers[key] = sub
            self.topics.setdefault(topic, {})[function_id] = sub
        return sub

    # --- accepting ---------------------------------------------------------------------------

    def _encode(self, data: Any, what: str) -> bytes:
        try:
            blob = orjson.dumps(data)
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise EnqueueError(f"the data for {what} is not JSON-serialisable: {exc}") from None
        if len(blob) > self.max_data_size:
            raise EnqueueError(f"the data for {what} is {len(blob)} bytes; at most {self.max_data_size} fit in "
                               f"a delivery (supervisor.max_frame_size)")
        return blob

    async def publish(self, topic: Any, data: Any) -> dict[str, Any]:
        """Store one copy of ``data`` per subscriber of ``topic``; returns once committed."""
        if not isinstance(topic, str) or not topic:
            raise EnqueueError(f"publish needs a non-empty string topic, got {topic!r}")
        blob = self._encode(data, f"topic {topic!r}")
        receipt = f"{self._receipt_prefix}-{next(self._receipts)}"
        subs = list(self.topics.get(topic, {}).values())
        if not subs:
            log.debug("queue: nothing subscribes to topic %r; message %s dropped", topic, receipt)
            return {"messageReceiptId": receipt, "subscribers": 0}
        now = _now_ms()
        rows = [storage.NewRow(receipt, topic, s.function_id, s.function_id, blob,
                               group_of(s.lane.settings, data, queue=f"{topic} → {s.function_id}"), now)
                for s in subs]
        self._flush()  # the outcomes waiting ride on this commit
        traceparent = call_context().traceparent  # the delivery continues the publisher's trace
        ids = await self.store.write(storage.insert(rows))
        for sub, row, message_id in zip(subs, rows, ids, strict=True):
            self._accepted((topic, sub.function_id), Message(message_id, sub.function_id, data, row.group,
                                                             size=len(blob), traceparent=traceparent))
        return {"messageReceiptId": receipt, "subscribers": len(subs)}

    async def enqueue(self, queue: Any, function_id: Any, data: Any) -> dict[str, Any]:
        """Store a message for ``function_id`` in the named ``queue``; returns once committed."""
        if not isinstance(queue, str) or (queue, "") not in self.lanes:
            known = ", ".join(sorted(n for n, s in self.lanes if not s))
            raise EnqueueError(f"unknown queue {queue!r} (queues: {known}); declare it as [queues.{queue}] "
                               f"in the config file")
        if not isinstance(function_id, str) or not function_id:
            raise EnqueueError(f"enqueue into queue {queue!r} needs a function id, got {function_id!r}")
        lane = self.lanes[(queue, "")]
        blob = self._encode(data, f"queue {queue!r}")
        group = group_of(lane.settings, data, queue=queue)
        receipt = f"{self._receipt_prefix}-{next(self._receipts)}"
        row = storage.NewRow(receipt, queue, "", function_id, blob, group, _now_ms())
        self._flush()
        traceparent = call_context().traceparent
        (message_id,) = await self.store.write(storage.insert([row]))
        self._accepted((queue, ""), Message(message_id, function_id, data, group, size=len(blob),
                                            traceparent=traceparent))
        return {"messageReceiptId": receipt}

    def _accepted(self, key: LaneKey, msg: Message) -> None:
        lane = self.lanes.get(key)
        if lane is None:  # the subscription went away while the write committed: it is on disk
            return
        if lane.accepts():
            lane.add(msg)
            self._pump(key, lane)
        else:
            lane.backlog = True
            lane.disk_only_count += 1
            self._request_refill(key)

    async def _enqueue_action(self, call: ActionCall) -> dict[str, Any]:
        queue = getattr(call.action, "queue", None) or DEFAULT_QUEUE
        return await self.enqueue(queue, call.function_id, call.data)

    # --- delivering --------------------------------------------------------------------------

    def _pump(self, key: LaneKey, lane: Lane) -> None:
        sub = self._subscribers.get(key)
        if sub is not None and not sub.bindings:
            return  # nobody listens right now: the messages wait (retention)
        while (msg := lane.take()) is not None:
            if sub is not None and sub.condition_function_id and not msg.condition_passed:
                target, condition = sub.condition_function_id, True
            else:
                target, condition = msg.function_id, False
            entry = self.registry.lookup(target)
            if entry is None:
                if sub is not None:  # a subscriber's worker is (re)starting: wait for it, no attempt spent
                    lane.returned(msg)
                    self._recheck_later(key)
                    break
                self._failed(key, lane, msg, f"function_not_found: function {target!r} not found")
                continue
            self._call(key, msg, entry, condition)
        if lane.backlog and len(lane) <= lane.window // 2 and lane.bytes <= lane.window_bytes // 2:
            self._request_refill(key)

    def _call(self, key: LaneKey, msg: Message, entry: FunctionEntry, condition: bool) -> None:
        timeout = self.invoker.default_timeout
        if entry.builtin is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._call_builtin, key, msg, entry, condition, timeout)
            return
        pending = self.invoker.start_local(entry, msg.data, timeout=timeout, notify=self._results,
                                           traceparent=child_traceparent(msg.traceparent))
        self._deliveries[pending.id] = _Delivery(key, msg, condition)

    async def _call_builtin(self, key: LaneKey, msg: Message, entry: FunctionEntry, condition: bool,
                            timeout: float) -> None:
        inv_id = f"builtin-{msg.id}-{id(msg)}"
        self._deliveries[inv_id] = _Delivery(key, msg, condition)
        try:
            result = await self.invoker.call(entry.id, msg.data, timeout=timeout,
                                             traceparent=child_traceparent(msg.traceparent))
        except EngineError as exc:
            self._results.put(InvocationResult(invocation_id=inv_id, function_id=entry.id, error=ErrorBody.of(exc)))
        else:
            self._results.put(InvocationResult(invocation_id=inv_id, function_id=entry.id, result=result))

    async def _serve_results(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        results = self._results
        while True:
            self._on_result(await results.get())
            for _ in range(len(results)):  # everything already there, then one batch of writes
                self._on_result(results._items.popleft())
            self._flush_soon()
            await trio.lowlevel.checkpoint()  # a steady stream of answers must not starve the loop

    def _on_result(self, result: InvocationResult) -> None:
        delivery = self._deliveries.pop(result.invocation_id or "", None)
        if delivery is None:
            return
        key, msg = delivery.key, delivery.msg
        lane = self.lanes.get(key)
        if lane is None or msg.id not in lane.in_flight:
            return
        if result.error is not None:
            what = "condition " if delivery.condition else ""
            self._failed(key, lane, msg, f"{what}{result.error.code}: {result.error.message}")
        elif delivery.condition and not result.result:
            self._done(key, lane, msg)  # the condition said no: acknowledged, skipped, not retried
            return
        elif delivery.condition:
            msg.condition_passed = True
            entry = self.registry.lookup(msg.function_id)
            if entry is None:
                lane.returned(msg)
                msg.condition_passed = False
                self._recheck_later(key)
                return
            self._call(key, msg, entry, False)
            return
        else:
            self._done(key, lane, msg)
            return
        self._pump(key, lane)

    def _done(self, key: LaneKey, lane: Lane, msg: Message) -> None:
        lane.succeeded(msg)
        self._acks.append(msg.id)
        self._pump(key, lane)

    def _failed(self, key: LaneKey, lane: Lane, msg: Message, error: str) -> None:
        now = trio.current_time()
        failure = lane.failed(msg, error, now)
        if failure.dead:
            log.warning("queue %s: message %d dead-lettered after %d attempt(s): %s", lane.name, msg.id,
                        failure.attempts, error)
            self._deads.append((msg.id, failure.attempts, error))
        else:
            assert failure.delay_ms is not None
            self._retries.append((msg.id, failure.attempts, _now_ms() + failure.delay_ms, error))
            self._schedule(now + failure.delay_ms / 1000, key)

    def _flush_soon(self) -> None:
        """Submit the outcomes gathered so far with the next write, or within ``_OUTCOME_DELAY``.

        Folding them into the commit of the next enqueue saves a commit (an fsync) per batch;
        losing them in a crash only means those messages are delivered again."""
        if self._flush_due == math.inf and (self._acks or self._retries or self._deads):
            self._flush_due = trio.current_time() + _OUTCOME_DELAY
            scope = self._timer_scope
            if scope is not None and self._flush_due < scope.deadline:
                scope.deadline = self._flush_due

    def _flush(self) -> None:
        """Submit the acks, retries and dead letters gathered so far as one write."""
        self._flush_due = math.inf
        if not (self._acks or self._retries or self._deads):
            return
        ops = []
        if self._acks:
            ops.append(storage.ack(self._acks))
        if self._retries:
            ops.append(storage.retry_later(self._retries))
        if self._deads:
            ops.append(storage.dead_letter(self._deads, _now_ms()))
        self._acks, self._retries, self._deads = [], [], []

        def op(conn: Any) -> None:
            for one in ops:
                one(conn)

        try:
            self.store.write_nowait(op)
        except EngineError as exc:  # the store stopped first: these messages are redelivered
            log.warning("queue: could not record %d outcome(s): %s", len(ops), exc)

    # --- timers and refills --------------------------------------------------------------------

    def _recheck_later(self, key: LaneKey) -> None:
        """Look at ``key`` again soon: its subscriber's function is not registered right now."""
        if key not in self._rechecks:
            self._rechecks.add(key)
            self._schedule(trio.current_time() + _MISSING_FUNCTION_RECHECK, key)

    def _schedule(self, when: float, key: LaneKey) -> None:
        heapq.heappush(self._timers, (when, key))
        scope = self._timer_scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    async def _serve_timers(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            deadline = min(self._timers[0][0] if self._timers else math.inf, self._flush_due)
            with trio.CancelScope(deadline=deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            if self._flush_due <= now:
                self._flush()
            due: set[LaneKey] = set()
            while self._timers and self._timers[0][0] <= now:
                due.add(heapq.heappop(self._timers)[1])
            for key in due:
                self._rechecks.discard(key)
                lane = self.lanes.get(key)
                if lane is not None:
                    lane.release_due(now)
                    self._pump(key, lane)
            self._flush()

    def _request_refill(self, key: LaneKey) -> None:
        if key not in self._refill_pending:
            self._refill_pending.add(key)
            self._refills.put(key)

    async def _serve_refills(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            key = await self._refills.get()
            self._refill_pending.discard(key)
            lane = self.lanes.get(key)
            while lane is not None and lane.backlog and not lane.full():
                seen = lane.disk_only_count
                want = lane.window - len(lane)
                asked = want + len(lane)
                self._flush()
                # through the writer: it runs after every ack already submitted, so no message
                # that was just handled is loaded again
                rows = await self.store.write(storage.load(key, asked))
                now_ms, now = _now_ms(), trio.current_time()
                for row in rows:
                    if row.id in lane or lane.full():
                        continue
                    msg = Message(row.id, row.function_id, orjson.loads(row.data), row.group, row.attempts,
                                  size=len(row.data))
                    due = now + (row.due_ms - now_ms) / 1000 if row.due_ms > now_ms else None
                    lane.add(msg, due=due)
                    if due is not None:
                        self._schedule(due, key)
                if len(rows) < asked and lane.disk_only_count == seen:
                    lane.backlog = False
                self._pump(key, lane)
                lane = self.lanes.get(key)
            self._flush()

    async def _housekeeping(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(_HOUSEKEEPING_INTERVAL)
            self._touch_active()
            now = _now_ms()
            for key, sub in list(self._subscribers.items()):
                if sub.bindings:
                    continue
                seen = sub.left_ms if sub.left_ms is not None else now
                if now - seen > self.config.subscription_retention_s * 1000 and not sub.lane.in_flight:
                    self._forget(key, sub)
                    dropped = await self.store.write(storage.drop_subscription(*key))
                    log.warning("queue: subscription of %r to topic %r unused for %.0f s: dropped with %d "
                                "waiting message(s)", sub.function_id, sub.topic, (now - seen) / 1000, dropped)

    def _forget(self, key: LaneKey, sub: Subscriber) -> None:
        self._subscribers.pop(key, None)
        self.lanes.pop(key, None)
        subs = self.topics.get(sub.topic, {})
        subs.pop(sub.function_id, None)
        if not subs:
            self.topics.pop(sub.topic, None)

    def _touch_active(self) -> None:
        now = _now_ms()
        for sub in self._subscribers.values():
            if sub.bindings:
                try:
                    self.store.write_nowait(storage.touch_subscription(sub.topic, sub.function_id, now))
                except EngineError:
                    return

    # --- bindings (the ``queue`` trigger type) ---------------------------------------------------

    def bind(self, trigger: TriggerEntry) -> None:
        config = trigger.config if isinstance(trigger.config, dict) else {}
        topic = config.get("topic")
        if not isinstance(topic, str) or not topic:
            raise TriggerRegistrationError(f"queue trigger {trigger.id!r}: config.topic must be a non-empty "
                                           f"string, got {topic!r}")
        condition = condition_function_id(config, f"queue trigger {trigger.id!r}")
        raw = config.get("queue_config")
        try:
            settings = parse_settings(raw, where="config.queue_config")
        except ValueError as exc:
            raise TriggerRegistrationError(f"queue trigger {trigger.id!r}: {exc}") from None
        queue_config = dict(raw) if isinstance(raw, dict) else {}
        key = (topic, trigger.function_id)
        sub = self._subscribers.get(key)
        if sub is None:
            sub = self._subscriber(topic, trigger.function_id, settings, queue_config, condition)
        elif sub.lane.settings != settings and sub.lane.settings.type != settings.type and len(sub.lane):
            raise TriggerRegistrationError(
                f"queue trigger {trigger.id!r}: the subscription of {trigger.function_id!r} to {topic!r} holds "
                f"{len(sub.lane)} {sub.lane.settings.type} message(s); it cannot become {settings.type} now")
        else:
            if sub.bindings and (sub.queue_config != queue_config or sub.condition_function_id != condition):
                log.warning("queue: binding %s of %r to topic %r changes its settings for every binding",
                            trigger.id, trigger.function_id, topic)
            sub.lane.settings = settings
            sub.queue_config = queue_config
            sub.condition_function_id = condition
        sub.bindings.add(trigger.id)
        sub.left_ms = None
        try:
            self.store.write_nowait(storage.save_subscription(storage.Subscription(
                topic, trigger.function_id, orjson.dumps(queue_config).decode(), condition, _now_ms())))
        except EngineError as exc:
            raise TriggerRegistrationError(f"queue trigger {trigger.id!r}: the store is not running ({exc})") from None
        self._pump(key, sub.lane)

    def unbind(self, trigger: TriggerEntry) -> None:
        topic = trigger.config.get("topic") if isinstance(trigger.config, dict) else None
        sub = self._subscribers.get((topic, trigger.function_id)) if isinstance(topic, str) else None
        if sub is None:
            return
        sub.bindings.discard(trigger.id)
        if not sub.bindings:
            now = _now_ms()
            sub.left_ms = now
            try:
                self.store.write_nowait(storage.touch_subscription(sub.topic, sub.function_id, now))
            except EngineError:
                pass

    # --- built-in functions ----------------------------------------------------------------------

    def _install_functions(self) -> None:
        add: Callable[..., None] = self.registry.add_builtin

        async def publish(data: Any) -> dict[str, Any]:
            if not isinstance(data, dict):
                raise EnqueueError(f'enqueue needs {{"topic": "...", "data": ...}}, got {short_json(data)}')
            return await self.publish(data.get("topic"), data.get("data"))

        async def enqueue_to_queue(data: Any) -> dict[str, Any]:
            if not isinstance(data, dict):
                raise EnqueueError('engine::queue::enqueue needs {"queue", "function_id", "data"}, '
                                   f"got {short_json(data)}")
            return await self.enqueue(data.get("queue", DEFAULT_QUEUE), data.get("function_id"), data.get("data"))

        add("enqueue", publish, "Publish {topic, data} to every subscriber of the topic (durable)")
        add("iii::durable::publish", publish, "Alias of enqueue: publish {topic, data}")
        add("engine::queue::enqueue", enqueue_to_queue, "Enqueue {queue, function_id, data} into a named queue")
        add("engine::queue::list_topics", self._list_topics, "Topics with their subscribers")
        add("engine::queue::topic_stats", self._stats, "Per queue and subscriber: ready, in flight, delayed, dead "
                                                       "({topic?} or {queue?} to filter)")
        add("engine::queue::dlq_messages", self._dlq_messages, "Dead letters of a queue or topic {queue|topic, "
                                                               "offset?, limit?}")
        add("iii::queue::redrive", self._redrive, "Move every dead letter of {queue} (or topic) back to its lane")
        add("iii::queue::redrive_message", self._redrive_message, "Move one dead letter {queue, message_id} back")
        add("iii::queue::discard_message", self._discard_message, "Delete one dead letter {queue, message_id}")

    async def _list_topics(self, _data: Any) -> dict[str, Any]:
        return {"topics": [{"topic": topic, "subscribers": [
            {"function_id": s.function_id, "bindings": len(s.bindings),
             "condition_function_id": s.condition_function_id}
            for s in sorted(subs.values(), key=lambda s: s.function_id)]}
            for topic, subs in sorted(self.topics.items())]}

    async def _stats(self, data: Any) -> dict[str, Any]:
        want = _name_arg(data, required=False)
        counts = await self.store.read(storage.lane_counts(_now_ms()))
        rows = []
        for key in sorted(set(self.lanes) | set(counts)):
            if want is not None and key[0] != want:
                continue
            lane, sub = self.lanes.get(key), self._subscribers.get(key)
            c = counts.get(key, {"waiting": 0, "delayed": 0, "dead": 0})
            in_flight = len(lane.in_flight) if lane is not None else 0
            rows.append({
                "kind": "topic" if key[1] else "queue", "name": key[0], "subscriber": key[1] or None,
                "subscribers": len(sub.bindings) if sub is not None else None,
                "type": lane.settings.type if lane is not None else None,
                # on disk and not dead: in flight + waiting for a retry + ready
                "ready": max(0, c["waiting"] - in_flight), "in_flight": in_flight,
                "delayed": c["delayed"], "dead": c["dead"],
            })
        return {"queues": rows}

    async def _dlq_messages(self, data: Any) -> dict[str, Any]:
        name = _name_arg(data)
        offset, limit = _int_arg(data, "offset", 0), _int_arg(data, "limit", 50)
        rows = await self.store.read(storage.dead_messages(name, offset, min(limit, 1000)))
        return {"queue": name, "messages": [{
            "message_id": str(r["id"]), "receipt_id": r["receipt"], "queue": r["queue"],
            "subscriber": r["subscriber"] or None, "function_id": r["function_id"], "data": orjson.loads(r["data"]),
            "attempts": r["attempts"], "error": r["last_error"], "created_ms": r["created_ms"],
            "failed_at": r["dead_ms"]} for r in rows]}

    async def _redrive(self, data: Any) -> dict[str, Any]:
        name = _name_arg(data)
        lanes = await self.store.write(storage.redrive(name, None))
        self._wake_lanes(lanes)
        return {"queue": name, "redriven": len(lanes)}

    async def _redrive_message(self, data: Any) -> dict[str, Any]:
        name, message_id = _name_arg(data), _message_id_arg(data)
        lanes = await self.store.write(storage.redrive(name, message_id))
        if not lanes:
            raise InvocationError(f"no dead letter {message_id} in queue {name!r}", code="message_not_found")
        self._wake_lanes(lanes)
        return {"queue": name, "message_id": str(message_id), "redriven": True}

    async def _discard_message(self, data: Any) -> dict[str, Any]:
        name, message_id = _name_arg(data), _message_id_arg(data)
        if not await self.store.write(storage.discard(name, message_id)):
            raise InvocationError(f"no dead letter {message_id} in queue {name!r}", code="message_not_found")
        return {"queue": name, "message_id": str(message_id), "discarded": True}

    def _wake_lanes(self, keys: list[LaneKey]) -> None:
        for key in set(keys):
            lane = self.lanes.get(key)
            if lane is None:
                if key[1]:
                    self._subscriber(key[0], key[1], QueueSettings(), {}, None)
                else:
                    self.lanes[key] = Lane(key[0], QueueSettings())
                lane = self.lanes[key]
            lane.backlog = True
            lane.disk_only_count += 1
            self._request_refill(key)


class _Provider:
    """The ``queue`` trigger type (alias ``durable:subscriber``)."""

    def __init__(self, module: QueueModule) -> None:
        self.module = module

    def register(self, trigger: TriggerEntry) -> None:
        self.module.bind(trigger)

    def unregister(self, trigger: TriggerEntry) -> None:
        self.module.unbind(trigger)


def _name_arg(data: Any, *, required: bool = True) -> Any:
    name = None
    if isinstance(data, dict):
        name = data.get("queue", data.get("topic"))
    if name is None and not required:
        return None
    if not isinstance(name, str) or not name:
        raise InvocationError(f'expected {{"queue": "<queue or topic name>"}}, got {short_json(data)}',
                              code="invalid_argument")
    return name


def _int_arg(data: Any, key: str, default: int) -> int:
    value = data.get(key, default) if isinstance(data, dict) else default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvocationError(f"{key} must be a non-negative integer, got {value!r}", code="invalid_argument")
    return value


def _message_id_arg(data: Any) -> int:
    value = data.get("message_id") if isinstance(data, dict) else None
    try:
        if isinstance(value, bool):
            raise ValueError  # noqa: TRY004 - handled just below
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvocationError(f"message_id must be a message id (as listed by engine::queue::dlq_messages), "
                              f"got {value!r}", code="invalid_argument") from None
