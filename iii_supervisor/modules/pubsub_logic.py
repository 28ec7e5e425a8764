"""Pub/sub decisions, without I/O: ``subscribe`` configs, the topic index and the in-flight budget.

A publish fans out to every binding of its topic. Each binding has its own budget of deliveries
in flight (``max_in_flight_per_subscriber``) and all bindings share one overall budget
(``max_in_flight``): a delivery that fits neither is dropped and counted against that binding.
So a slow subscriber loses its own messages and nobody else's (until the overall budget is
full, which bounds memory whatever the subscribers do), and a publisher never waits.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import InvocationError, TriggerRegistrationError
from ..trigger_config import condition_function_id, known_keys
from ..trigger_config import short as _short

#: longest topic accepted (the protocol's id limit)
MAX_TOPIC = 1024

_KNOWN_KEYS = ("topic", "condition_function_id")


@attrs.frozen
class Subscription:
    """What a ``subscribe`` binding asks for."""

    topic: str
    condition_function_id: str | None = None


def parse_subscribe(trigger_id: str, config: Any) -> Subscription:
    """Validate a ``subscribe`` trigger's config; raises :class:`TriggerRegistrationError`
    naming the bad key and value."""
    where = f"subscribe trigger {trigger_id!r}"
    if not isinstance(config, dict):
        raise TriggerRegistrationError(f'{where}: config must be an object {{"topic": "..."}}, got {_short(config)}')
    known_keys(config, _KNOWN_KEYS, where)
    topic = config.get("topic")
    if topic is None:
        raise TriggerRegistrationError(f'{where}: config.topic is required (the topic to subscribe to), '
                                       f'e.g. {{"topic": "orders"}}')
    if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC:
        raise TriggerRegistrationError(f"{where}: config.topic must be a non-empty string of at most {MAX_TOPIC} "
                                       f"chars, got {_short(topic)}")
    condition = condition_function_id(config, where)
    return Subscription(topic, condition)


def parse_publish(data: Any) -> tuple[str, Any]:
    """``{topic, data}`` of a ``publish`` call → (topic, data); a missing ``data`` is null."""
    if not isinstance(data, dict):
        raise InvocationError(f'publish needs {{"topic": "...", "data": ...}}, got {_short(data)}',
                              code="invalid_argument")
    topic = data.get("topic")
    if not isinstance(topic, str) or not topic:
        raise InvocationError(f"publish: topic must be a non-empty string, got {_short(topic)}", code="topic_not_set")
    if len(topic) > MAX_TOPIC:
        raise InvocationError(f"publish: topic is {len(topic)} chars, at most {MAX_TOPIC}", code="invalid_argument")
    return topic, data.get("data")


@attrs.define(eq=False)
class Binding:
    """One ``subscribe`` binding and its counters."""

    trigger_id: str
    function_id: str
    subscription: Subscription
    in_flight: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    dropped: int = 0


@attrs.define
class Plan:
    """What one publish does: the bindings to deliver to now, and those that drop it."""

    deliver: list[Binding]
    drop: list[Binding]


class FanOut:
    """Topic → bindings, and the in-flight budget of deliveries."""

    def __init__(self, *, max_in_flight: int, max_in_flight_per_subscriber: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_subscriber = max_in_flight_per_subscriber
        #: topic → trigger id → binding (insertion order: registration order)
        self.topics: dict[str, dict[str, Binding]] = {}
        self.in_flight = 0
        self.published = 0

    def add(self, trigger_id: str, function_id: str, subscription: Subscription) -> Binding:
        self.remove(trigger_id)  # a re-registration under the same id replaces the binding
        binding = Binding(trigger_id, function_id, subscription)
        self.topics.setdefault(subscription.topic, {})[trigger_id] = binding
        return binding

    def remove(self, trigger_id: str) -> Binding | None:
        for topic, bindings in self.topics.items():
            binding = bindings.pop(trigger_id, None)
            if binding is not None:
                if not bindings:
                    del self.topics[topic]
                return binding
        return None

    def bindings(self, topic: str) -> list[Binding]:
        return list(self.topics.get(topic, {}).values())

    def plan(self, topic: str) -> Plan:
        """Take budget for one publish to ``topic``: each binding is admitted (its in-flight
        count and the total grow by one) or drops the message (counted)."""
        self.published += 1
        plan = Plan([], [])
        for binding in self.topics.get(topic, {}).values():
            if binding.in_flight >= self.max_in_flight_per_subscriber or self.in_flight >= self.max_in_flight:
                binding.dropped += 1
                plan.drop.append(binding)
                continue
            binding.in_flight += 1
            self.in_flight += 1
            plan.deliver.append(binding)
        return plan

    def done(self, binding: Binding, outcome: str) -> None:
        """A delivery admitted by :meth:`plan` ended: ``"delivered"``, ``"skipped"`` (its condition
        said no) or ``"failed"`` (an error, a timeout, the worker gone)."""
        binding.in_flight -= 1
        self.in_flight -= 1
        if outcome == "delivered":
            binding.delivered += 1
        elif outcome == "skipped":
            binding.skipped += 1
        else:
            binding.failed += 1
