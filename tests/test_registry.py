"""Pure unit tests of iii_supervisor.registry with fake owners and fake trigger providers."""

from __future__ import annotations

from typing import Any

import pytest

from iii_supervisor.errors import FunctionConflict, RegistrationError, TriggerRegistrationError
from iii_supervisor.registry import FunctionEntry, Registry, TriggerEntry, TriggerTypeEntry


class Owner:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Owner({self.name!r})"


class FakeProvider:
    """Records register/unregister calls; refuses configs containing ``{"bad": True}``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def register(self, trigger: TriggerEntry) -> None:
        if trigger.config.get("bad"):
            raise TriggerRegistrationError(f"bad config for {trigger.id!r}")
        self.calls.append(("register", trigger.id))

    def unregister(self, trigger: TriggerEntry) -> None:
        self.calls.append(("unregister", trigger.id))

    @property
    def registered(self) -> list[str]:
        return [tid for op, tid in self.calls if op == "register"]

    @property
    def unregistered(self) -> list[str]:
        return [tid for op, tid in self.calls if op == "unregister"]


def trig(tid: str, owner: Owner | None, *, type_: str = "http", fn: str = "fn", **config: Any) -> TriggerEntry:
    return TriggerEntry(tid, type_, fn, dict(config), owner)


@pytest.fixture
def reg() -> Registry:
    return Registry()


# --- functions -----------------------------------------------------------------------------------


def test_add_function_same_owner_is_idempotent_and_updates(reg: Registry) -> None:
    a = Owner("worker-a")
    reg.add_function(FunctionEntry("math.add", a, description="v1"))
    reg.add_function(FunctionEntry("math.add", a, description="v2"))
    assert list(reg.functions) == ["math.add"]
    assert reg.lookup("math.add").description == "v2"  # type: ignore[union-attr]
    assert reg.lookup("math.add").owner is a  # type: ignore[union-attr]


def test_add_function_other_owner_conflicts(reg: Registry) -> None:
    a, b = Owner("worker-a"), Owner("worker-b")
    reg.add_function(FunctionEntry("math.add", a))
    with pytest.raises(FunctionConflict) as info:
        reg.add_function(FunctionEntry("math.add", b))
    err = info.value
    assert err.code == "function_conflict"
    assert "math.add" in err.message
    assert "worker-a" in err.message
    assert reg.lookup("math.add").owner is a  # type: ignore[union-attr]


def test_same_name_different_owner_object_conflicts(reg: Registry) -> None:
    # ownership is by identity: two sessions with the same name are distinct owners
    reg.add_function(FunctionEntry("f", Owner("w")))
    with pytest.raises(FunctionConflict):
        reg.add_function(FunctionEntry("f", Owner("w")))


def test_builtin_conflict_names_the_engine(reg: Registry) -> None:
    async def handler(data: Any) -> Any:
        return data

    reg.add_builtin("engine.echo", handler, "echo")
    with pytest.raises(FunctionConflict, match="engine"):
        reg.add_function(FunctionEntry("engine.echo", Owner("w")))
    entry = reg.lookup("engine.echo")
    assert entry is not None and entry.builtin is handler and entry.owner is None and entry.owner_name == "engine"


def test_remove_function_only_by_its_owner(reg: Registry) -> None:
    a, b = Owner("a"), Owner("b")
    reg.add_function(FunctionEntry("f", a))
    assert reg.remove_function("f", b) is False
    assert reg.lookup("f") is not None
    assert reg.remove_function("f", a) is True
    assert reg.lookup("f") is None
    assert reg.remove_function("f", a) is False


# --- remove_owner --------------------------------------------------------------------------------


def test_remove_owner_removes_exactly_its_functions_and_triggers(reg: Registry) -> None:
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("http", "HTTP", provider))
    a, b = Owner("a"), Owner("b")
    reg.add_function(FunctionEntry("a.one", a))
    reg.add_function(FunctionEntry("a.two", a))
    reg.add_function(FunctionEntry("b.one", b))
    reg.add_trigger(trig("ta1", a, fn="a.one"))
    reg.add_trigger(trig("ta2", a, fn="a.two"))
    reg.add_trigger(trig("tb1", b, fn="b.one"))

    functions, triggers = reg.remove_owner(a)

    assert sorted(functions) == ["a.one", "a.two"]
    assert sorted(triggers) == ["ta1", "ta2"]
    assert list(reg.functions) == ["b.one"]
    assert list(reg.triggers) == ["tb1"]
    assert reg.triggers["tb1"].active
    assert sorted(provider.unregistered) == ["ta1", "ta2"]
    assert reg.functions_of(a) == []
    assert reg.functions_of(b) == ["b.one"]


def test_remove_owner_unregisters_only_active_triggers(reg: Registry) -> None:
    provider_owner = Owner("provider")
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("custom", "worker type", provider, owner=provider_owner))
    a = Owner("a")
    reg.add_trigger(trig("t1", a, type_="custom"))
    reg.remove_owner(provider_owner)  # parks t1
    assert reg.triggers["t1"].active is False
    provider.calls.clear()
    reg.remove_owner(a)
    assert "t1" not in reg.triggers
    assert provider.calls == []


# --- triggers ------------------------------------------------------------------------------------


def test_add_trigger_unknown_type_lists_known_types(reg: Registry) -> None:
    reg.add_trigger_type(TriggerTypeEntry("http", "HTTP", FakeProvider()))
    reg.add_trigger_type(TriggerTypeEntry("cron", "Cron", FakeProvider()))
    with pytest.raises(TriggerRegistrationError) as info:
        reg.add_trigger(trig("t", Owner("a"), type_="smoke-signal"))
    msg = info.value.message
    assert info.value.code == "trigger_registration_failed"
    assert "smoke-signal" in msg
    assert "cron" in msg and "http" in msg
    assert reg.triggers == {}


def test_add_trigger_unknown_type_with_no_types(reg: Registry) -> None:
    with pytest.raises(TriggerRegistrationError, match="none"):
        reg.add_trigger(trig("t", Owner("a"), type_="http"))


def test_add_trigger_registers_with_provider_and_activates(reg: Registry) -> None:
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("http", "HTTP", provider))
    t = trig("t1", Owner("a"), path="/x")
    reg.add_trigger(t)
    assert provider.registered == ["t1"]
    assert reg.triggers["t1"] is t and t.active


def test_provider_refusal_leaves_nothing_stored(reg: Registry) -> None:
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("http", "HTTP", provider))
    t = trig("t1", Owner("a"), bad=True)
    with pytest.raises(TriggerRegistrationError, match="bad config"):
        reg.add_trigger(t)
    assert "t1" not in reg.triggers
    assert t.active is False
    assert provider.calls == []


def test_aliases_canonicalise_trigger_type(reg: Registry) -> None:
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("queue", "Queue", provider, aliases=("durable:subscriber",)))
    assert reg.canonical_type("durable:subscriber") == "queue"
    assert reg.canonical_type("queue") == "queue"
    assert reg.canonical_type("other") == "other"
    t = trig("t1", Owner("a"), type_="durable:subscriber")
    reg.add_trigger(t)
    assert reg.triggers["t1"].trigger_type == "queue"
    assert provider.registered == ["t1"]


def test_trigger_id_reused_by_another_owner_is_refused(reg: Registry) -> None:
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("http", "HTTP", provider))
    a, b = Owner("a"), Owner("b")
    first = trig("shared", a, fn="a.fn")
    reg.add_trigger(first)
    with pytest.raises(TriggerRegistrationError, match="shared"):
        reg.add_trigger(trig("shared", b, fn="b.fn"))
    assert reg.triggers["shared"] is first and first.active
    assert provider.registered == ["shared"]
    assert provider.unregistered == []


def test_trigger_id_reused_by_same_owner_replaces(reg: Registry) -> None:
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("http", "HTTP", provider))
    a = Owner("a")
    reg.add_trigger(trig("t", a, fn="old"))
    reg.add_trigger(trig("t", a, fn="new"))
    assert reg.triggers["t"].function_id == "new"
    assert provider.calls == [("register", "t"), ("unregister", "t"), ("register", "t")]


def test_refused_update_of_a_trigger_keeps_the_binding_that_worked(reg: Registry) -> None:
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("http", "HTTP", provider))
    a = Owner("a")
    old = trig("t", a, fn="old")
    reg.add_trigger(old)
    with pytest.raises(TriggerRegistrationError, match="bad config"):
        reg.add_trigger(trig("t", a, fn="new", bad=True))
    assert reg.triggers["t"] is old and old.active  # still bound, and registered again
    assert provider.calls == [("register", "t"), ("unregister", "t"), ("register", "t")]


def test_remove_trigger_only_by_owner(reg: Registry) -> None:
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("http", "HTTP", provider))
    a, b = Owner("a"), Owner("b")
    reg.add_trigger(trig("t", a))
    assert reg.remove_trigger("t", b) is None
    assert provider.unregistered == []
    removed = reg.remove_trigger("t", a)
    assert removed is not None and removed.active is False
    assert provider.unregistered == ["t"]
    assert reg.triggers == {}


# --- worker-provided trigger types: park and replay ----------------------------------------------


def test_worker_trigger_type_owner_leaving_parks_and_new_owner_replays(reg: Registry) -> None:
    p1, p2 = Owner("provider-1"), Owner("provider-2")
    user = Owner("user")
    prov1, prov2 = FakeProvider(), FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("webhook", "Webhooks", prov1, owner=p1))
    reg.add_function(FunctionEntry("user.fn", user))
    reg.add_trigger(trig("w1", user, type_="webhook", fn="user.fn"))
    reg.add_trigger(trig("w2", user, type_="webhook", fn="user.fn"))
    assert prov1.registered == ["w1", "w2"]

    reg.remove_owner(p1)
    # the bindings are parked, not dropped
    assert set(reg.triggers) == {"w1", "w2"}
    assert all(not t.active for t in reg.triggers.values())
    assert reg.trigger_types["webhook"].provider is None

    # a binding added while the type is away is stored parked
    reg.add_trigger(trig("w3", user, type_="webhook", fn="user.fn"))
    assert reg.triggers["w3"].active is False

    reg.add_trigger_type(TriggerTypeEntry("webhook", "Webhooks", prov2, owner=p2))
    assert sorted(prov2.registered) == ["w1", "w2", "w3"]
    assert all(t.active for t in reg.triggers.values())
    assert prov1.registered == ["w1", "w2"]  # the old provider got nothing more


def test_replay_refusal_keeps_binding_parked(reg: Registry) -> None:
    p1, p2, user = Owner("p1"), Owner("p2"), Owner("user")
    reg.add_trigger_type(TriggerTypeEntry("webhook", "W", FakeProvider(), owner=p1))
    reg.remove_owner(p1)
    reg.add_trigger(trig("bad", user, type_="webhook", bad=True))  # parked: no provider to refuse it
    reg.add_trigger(trig("good", user, type_="webhook"))
    prov2 = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("webhook", "W", prov2, owner=p2))  # must not raise
    assert prov2.registered == ["good"]
    assert reg.triggers["good"].active is True
    assert reg.triggers["bad"].active is False


def test_trigger_type_taken_by_another_live_owner_is_refused(reg: Registry) -> None:
    p1, p2 = Owner("p1"), Owner("p2")
    reg.add_trigger_type(TriggerTypeEntry("webhook", "W", FakeProvider(), owner=p1))
    with pytest.raises(RegistrationError, match="p1"):
        reg.add_trigger_type(TriggerTypeEntry("webhook", "W", FakeProvider(), owner=p2))
    assert reg.trigger_types["webhook"].owner is p1


def test_remove_trigger_type_by_non_owner_is_ignored(reg: Registry) -> None:
    p1, other = Owner("p1"), Owner("other")
    provider = FakeProvider()
    reg.add_trigger_type(TriggerTypeEntry("webhook", "W", provider, owner=p1))
    reg.add_trigger(trig("t", Owner("u"), type_="webhook"))
    reg.remove_trigger_type("webhook", other)
    assert reg.trigger_types["webhook"].provider is provider
    assert reg.triggers["t"].active is True
