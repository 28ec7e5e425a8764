"""The pub/sub module: the ``subscribe`` trigger type and the ``publish`` function (docs/pubsub.md).

``publish {topic, data}`` hands ``data`` to every ``subscribe`` binding of ``topic`` and returns
null at once (as the reference engine does). Nothing is stored: a subscriber that is not there,
fails or times out simply misses the message (the durable kind is the queue module's
``durable:subscriber`` / ``iii::durable::publish``).

Each delivery is one task in the module's nursery (the condition, if any, then the function,
under one deadline), so the bindings of a topic run concurrently and a slow or failing one
delays nobody. Memory is bounded by the in-flight budget of :mod:`.pubsub_logic`: beyond it a
delivery is dropped, counted per binding (``engine::pubsub::stats``) and logged at most once per
10 s per binding. A subscriber that stops reading its socket is refused at once by the invoker
(``worker_overloaded``), which counts as a failed delivery.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from ..config import positive
from ..errors import EngineError
from ..invocation import Invoker
from ..ratelimit import RateLimitedLog
from ..registry import Registry, TriggerEntry, TriggerTypeEntry
from ..tracing import call_context, child_traceparent
from .base import ModuleContext, ModuleSpec
from .pubsub_logic import Binding, FanOut, parse_publish, parse_subscribe

log = logging.getLogger(__name__)

#: one line per binding and kind (failed, dropped) per this many seconds, then a count
WARNING_INTERVAL = 10.0


@attrs.frozen(kw_only=True)
class PubSubConfig:
    #: Deliveries in flight at most, over all subscribers; beyond it messages are dropped.
    max_in_flight: int = attrs.field(default=10_000, validator=positive)
    #: Deliveries in flight at most to one binding (a slow subscriber drops its own messages).
    max_in_flight_per_subscriber: int = attrs.field(default=1_000, validator=positive)
    #: Deadline of one delivery (condition and function together), in milliseconds;
    #: default: ``supervisor.invocation_timeout_ms``.
    delivery_timeout_ms: int | None = attrs.field(default=None,
                                                  validator=attrs.validators.optional(positive))


class PubSubModule:
    def __init__(self, config: PubSubConfig, registry: Registry, invoker: Invoker) -> None:
        self.config = config
        self.registry = registry
        self.invoker = invoker
        self.fanout = FanOut(max_in_flight=config.max_in_flight,
                             max_in_flight_per_subscriber=config.max_in_flight_per_subscriber)
        self._warnings = RateLimitedLog(log, WARNING_INTERVAL)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._warnings.run)
            self._nursery = nursery
            self.registry.add_trigger_type(TriggerTypeEntry(
                "subscribe", "Every message published to config.topic (fire and forget, not durable)", self))
            self.registry.add_builtin("publish", self._publish,
                                      "Publish {topic, data} to every subscribe binding of the topic (not durable; "
                                      "returns null at once)")
            self.registry.add_builtin("engine::pubsub::stats", self._stats,
                                      "Pub/sub topics, their bindings and delivery counts")
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # --- the trigger type (TriggerProvider) -----------------------------------------------------

    def register(self, trigger: TriggerEntry) -> None:
        self.fanout.add(trigger.id, trigger.function_id, parse_subscribe(trigger.id, trigger.config))

    def unregister(self, trigger: TriggerEntry) -> None:
        self.fanout.remove(trigger.id)

    # --- built-ins ------------------------------------------------------------------------------

    async def _publish(self, data: Any) -> None:
        topic, payload = parse_publish(data)
        plan = self.fanout.plan(topic)
        for binding in plan.drop:
            self._warnings.warning(
                ("dropped", binding.trigger_id),
                "pubsub: subscriber %s (trigger %s, topic %r) is not keeping up: message dropped, %d so far "
                "(%d in flight; pubsub.max_in_flight_per_subscriber %d, pubsub.max_in_flight %d)",
                binding.function_id, binding.trigger_id, topic, binding.dropped, binding.in_flight,
                self.config.max_in_flight_per_subscriber, self.config.max_in_flight)
        if plan.deliver:
            nursery = self._nursery
            assert nursery is not None, "PubSubModule.run is not running"
            traceparent = call_context().traceparent  # each delivery continues the publisher's trace
            for binding in plan.deliver:
                nursery.start_soon(self._deliver, binding, payload, traceparent)
        return None

    async def _deliver(self, binding: Binding, data: Any, traceparent: str | None) -> None:
        outcome = "failed"
        step = binding.subscription.condition_function_id
        timeout = (self.config.delivery_timeout_ms / 1000 if self.config.delivery_timeout_ms is not None
                   else self.invoker.default_timeout)
        try:
            with trio.move_on_after(timeout) as scope:  # one deadline for the condition and the call
                tp = child_traceparent(traceparent)
                if step is not None and not await self.invoker.call(step, data, timeout=timeout, traceparent=tp):
                    outcome = "skipped"
                    return
                step = binding.function_id
                await self.invoker.call(step, data, timeout=timeout, traceparent=tp)
                outcome = "delivered"
            if scope.cancelled_caught:
                self._failed(binding, step, "invocation_timeout: no answer in time")
        except EngineError as exc:
            self._failed(binding, step, str(exc))
        finally:
            self.fanout.done(binding, outcome)

    def _failed(self, binding: Binding, step: str | None, problem: str) -> None:
        self._warnings.warning(("failed", binding.trigger_id),
                               "pubsub: delivery to %s (trigger %s, topic %r) failed in %s: %s",
                               binding.function_id, binding.trigger_id, binding.subscription.topic, step, problem)

    async def _stats(self, _data: Any) -> dict[str, Any]:
        fanout = self.fanout
        return {"published": fanout.published, "in_flight": fanout.in_flight,
                "max_in_flight": self.config.max_in_flight,
                "max_in_flight_per_subscriber": self.config.max_in_flight_per_subscriber,
                "topics": [{"topic": topic, "subscribers": [
                    {"trigger_id": b.trigger_id, "function_id": b.function_id,
                     "condition_function_id": b.subscription.condition_function_id, "in_flight": b.in_flight,
                     "delivered": b.delivered, "skipped": b.skipped, "failed": b.failed, "dropped": b.dropped}
                    for b in bindings.values()]}
                    for topic, bindings in sorted(fanout.topics.items())]}


def _build(ctx: ModuleContext, config: PubSubConfig) -> PubSubModule:
    return PubSubModule(config, ctx.registry, ctx.invoker)


SPEC = ModuleSpec(name="pubsub", section="pubsub", config_type=PubSubConfig, build=_build)
