"""Pub/sub decisions without I/O: subscribe configs, publish arguments, fan-out and its budget."""

from __future__ import annotations

import pytest

from iii_supervisor.errors import InvocationError, TriggerRegistrationError
from iii_supervisor.modules.pubsub_logic import FanOut, Subscription, parse_publish, parse_subscribe


def test_subscribe_config() -> None:
    assert parse_subscribe("t", {"topic": "orders"}) == Subscription("orders")
    assert parse_subscribe("t", {"topic": "o", "condition_function_id": "c"}) == Subscription("o", "c")
    assert parse_subscribe("t", {"topic": "o", "condition_function_id": None}) == Subscription("o")


@pytest.mark.parametrize(("config", "words"), [
    ({}, "config.topic is required"),
    (None, "config must be an object"),
    ([], "config must be an object"),
    ({"topic": ""}, "non-empty string"),
    ({"topic": 42}, "got 42"),
    ({"topic": "x" * 1025}, "at most 1024"),
    ({"topic": "o", "queue_config": {}}, "unknown config key(s) 'queue_config'"),
    ({"topic": "o", "condition_function_id": 3}, "condition_function_id must be a function id"),
])
def test_subscribe_config_refused(config: object, words: str) -> None:
    with pytest.raises(TriggerRegistrationError) as info:
        parse_subscribe("t1", config)
    assert words in info.value.message and "'t1'" in info.value.message


def test_publish_arguments() -> None:
    assert parse_publish({"topic": "a", "data": [1]}) == ("a", [1])
    assert parse_publish({"topic": "a"}) == ("a", None)  # (the SDK drops None fields)
    for bad, code in [({"data": 1}, "topic_not_set"), ({"topic": ""}, "topic_not_set"),
                      ({"topic": 5}, "topic_not_set"), ("a", "invalid_argument"),
                      ({"topic": "x" * 2000}, "invalid_argument")]:
        with pytest.raises(InvocationError) as info:
            parse_publish(bad)
        assert info.value.code == code


def test_fan_out_to_every_binding_of_the_topic() -> None:
    fan = FanOut(max_in_flight=100, max_in_flight_per_subscriber=10)
    a = fan.add("t1", "f.a", Subscription("orders"))
    b = fan.add("t2", "f.b", Subscription("orders"))
    fan.add("t3", "f.c", Subscription("other"))
    plan = fan.plan("orders")
    assert plan.deliver == [a, b] and plan.drop == []
    assert fan.in_flight == 2 and a.in_flight == 1
    assert fan.plan("nobody").deliver == []
    fan.done(a, "delivered")
    fan.done(b, "failed")
    assert (a.delivered, b.failed, fan.in_flight, fan.published) == (1, 1, 0, 2)


def test_rebinding_and_removal() -> None:
    fan = FanOut(max_in_flight=100, max_in_flight_per_subscriber=10)
    fan.add("t1", "f.a", Subscription("orders"))
    fan.add("t1", "f.a", Subscription("payments"))  # same id: the binding moves
    assert fan.bindings("orders") == [] and [b.trigger_id for b in fan.bindings("payments")] == ["t1"]
    removed = fan.remove("t1")
    assert removed is not None and fan.topics == {}
    assert fan.remove("t1") is None


def test_a_slow_subscriber_drops_its_own_messages_only() -> None:
    fan = FanOut(max_in_flight=100, max_in_flight_per_subscriber=3)
    slow = fan.add("slow", "f.slow", Subscription("t"))
    fast = fan.add("fast", "f.fast", Subscription("t"))
    for _ in range(5):
        plan = fan.plan("t")
        for binding in plan.deliver:
            if binding is fast:
                fan.done(binding, "delivered")  # answers at once; the slow one never does
    assert (slow.in_flight, slow.dropped) == (3, 2)
    assert (fast.delivered, fast.dropped) == (5, 0)
    fan.done(slow, "skipped")
    assert fan.plan("t").deliver == [slow, fast] and slow.skipped == 1


def test_the_overall_budget_bounds_everything() -> None:
    fan = FanOut(max_in_flight=4, max_in_flight_per_subscriber=3)
    subs = [fan.add(f"t{i}", f"f{i}", Subscription("t")) for i in range(3)]
    first = fan.plan("t")
    second = fan.plan("t")
    assert len(first.deliver) == 3 and len(second.deliver) == 1 and len(second.drop) == 2
    assert fan.in_flight == 4 and sum(s.dropped for s in subs) == 2


def test_garbage_is_refused_with_our_errors_only() -> None:
    """Random JSON-like input into every new parser (the subscribe config, the publish payload, a
    custom stream backend's answers, which issue 13 added too): our errors only, never a crash."""
    import random

    from iii_supervisor.modules.stream.logic import backend_delete_result, backend_write_result

    rng = random.Random(13)
    atoms: list[object] = [None, True, 0, -1, 2.5, float("nan"), "", "x", "é" * 2000, [], {}, [None], {"": None}]

    def value(depth: int = 0) -> object:
        if depth > 2 or rng.random() < 0.5:
            return rng.choice(atoms)
        if rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        keys = ["topic", "data", "condition_function_id", "new_value", "old_value", "x"]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randrange(4))}

    for _ in range(3000):
        garbage = value()
        for parse, errors in ((lambda g: parse_subscribe("t", g), TriggerRegistrationError),
                              (parse_publish, InvocationError),
                              (lambda g: backend_write_result("f", "set", g), InvocationError),
                              (lambda g: backend_delete_result("f", g), InvocationError)):
            try:
                parse(garbage)
            except errors:
                pass
