"""The state module in-process (fake workers, an in-memory stand-in for the store)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from iii_supervisor.errors import EngineError, TriggerRegistrationError
from iii_supervisor.modules import state
from iii_supervisor.modules.state import StateModule
from iii_supervisor.protocol import InvokeFunction
from inprocess import FakeWorker, engine_parts
from memstore import MemoryStore

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def settle() -> None:
    for _ in range(20):
        await trio.sleep(0.005)


async def recorder(worker: FakeWorker, function_id: str, result: Any = None) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def handler(data: Any) -> Any:
        got.append(data)
        return result

    await worker.register_function(function_id, handler)
    return got


async def test_functions_have_the_reference_shapes() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[state.SPEC], store=MemoryStore()) as parts:
            w = await parts.worker()
            assert await w.call("state::get", {"scope": "users", "key": "u1"}) is None
            assert await w.call("state::set", {"scope": "users", "key": "u1", "value": {"name": "ann"}}) == {
                "old_value": None, "new_value": {"name": "ann"}}
            assert await w.call("state::set", {"scope": "users", "key": "u1", "data": {"name": "bob"}}) == {
                "old_value": {"name": "ann"}, "new_value": {"name": "bob"}}  # `data` is accepted for `value`
            await w.call("state::set", {"scope": "users", "key": "u0", "value": 0})
            await w.call("state::set", {"scope": "config", "key": "flags", "value": [True]})
            await w.call("state::set", {"scope": "empty", "key": "k", "value": None})  # null is a value
            assert await w.call("state::get", {"scope": "users", "key": "u1"}) == {"name": "bob"}
            assert await w.call("state::list", {"scope": "users"}) == [0, {"name": "bob"}]
            assert await w.call("state::list", {"scope": "users", "include_keys": True}) == [
                {"key": "u0", "value": 0}, {"key": "u1", "value": {"name": "bob"}}]
            assert await w.call("state::list", {"scope": "nobody"}) == []
            assert await w.call("state::list_groups", {}) == {"groups": ["config", "empty", "users"],
                                                               "counts": {"config": 1, "empty": 1, "users": 2}}
            assert await w.call("state::update", {"scope": "users", "key": "u1", "ops": [
                {"type": "set", "path": "age", "value": 3}, {"type": "increment", "path": "age", "by": 2},
                {"type": "append", "path": "tags", "value": "x"}]}) == {
                "old_value": {"name": "bob"}, "new_value": {"name": "bob", "age": 5, "tags": ["x"]}}
            assert await w.call("state::update", {"scope": "counters", "key": "c", "ops": [
                {"type": "increment", "path": "", "by": 1}]}) == {"old_value": None, "new_value": 1}
            assert await w.call("state::delete", {"scope": "users", "key": "u1"}) == {
                "name": "bob", "age": 5, "tags": ["x"]}
            assert await w.call("state::delete", {"scope": "users", "key": "u1"}) is None
            await w.call("state::delete", {"scope": "config", "key": "flags"})
            assert (await w.call("state::list_groups", {}))["groups"] == ["counters", "empty", "users"]


async def test_concurrent_updates_of_one_key_are_atomic() -> None:
    with trio.fail_after(20):
        async with engine_parts(modules=[state.SPEC], store=MemoryStore()) as parts:
            a, b = await parts.worker("a"), await parts.worker("b")
            inc = {"scope": "c", "key": "n", "ops": [{"type": "increment", "path": "hits", "by": 1}]}

            async def hammer(w: FakeWorker) -> None:
                for _ in range(300):
                    await w.call("state::update", inc)

            async with trio.open_nursery() as nursery:
                for w in (a, b, a, b):
                    nursery.start_soon(hammer, w)
            assert await a.call("state::get", {"scope": "c", "key": "n"}) == {"hits": 1200}


async def test_a_bad_op_fails_the_call_names_the_op_and_changes_nothing() -> None:
    store = MemoryStore()
    with trio.fail_after(10):
        async with engine_parts(modules=[state.SPEC], store=store) as parts:
            w = await parts.worker()
            events = await recorder(w, "w.on")
            await w.register_trigger("state", "w.on")
            await w.call("state::set", {"scope": "s", "key": "k", "value": {"name": "x", "n": 1}})
            writes = store.writes
            for ops, code, words in (
                ([{"type": "increment", "path": "n"}, {"type": "increment", "path": "name"}], "update_type_error",
                 "ops[1] increment at path 'name'"),
                ([{"type": "frobnicate", "path": "n"}], "unknown_update_op", "'frobnicate'"),
                ([{"type": "set", "path": ["name", "first"], "value": 1}], "update_path_error", "['name', 'first']"),
                ("not a list", "invalid_update", "ops must be a list"),
            ):
                with pytest.raises(EngineError) as info:
                    await w.call("state::update", {"scope": "s", "key": "k", "ops": ops})
                assert info.value.code == code and words in info.value.message, info.value
            assert await w.call("state::get", {"scope": "s", "key": "k"}) == {"name": "x", "n": 1}
            assert store.writes == writes
            await settle()
            assert [e["event_type"] for e in events] == ["created"]


async def test_bad_arguments_and_oversize_values_are_refused() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[state.SPEC], store=MemoryStore(),
                                config={"state": {"max_value_size": 100}}) as parts:
            w = await parts.worker()
            with pytest.raises(EngineError) as info:
                await w.call("state::set", {"scope": "s", "key": "big", "value": "x" * 200})
            assert info.value.code == "VALUE_TOO_LARGE" and "202 bytes" in info.value.message
            assert "'s'/'big'" in info.value.message and "100" in info.value.message
            with pytest.raises(EngineError) as info:
                await w.call("state::update", {"scope": "s", "key": "big", "ops": [
                    {"type": "set", "path": "a", "value": "y" * 200}]})
            assert info.value.code == "VALUE_TOO_LARGE"
            assert await w.call("state::get", {"scope": "s", "key": "big"}) is None
            for function, data, words in (
                ("state::set", {"scope": "s", "key": "k"}, '"value" is missing'),
                ("state::set", {"scope": "", "key": "k", "value": 1}, "scope must be a non-empty string"),
                ("state::get", {"scope": "s", "key": 5}, "key must be a non-empty string of at most 1024 chars"),
                ("state::get", {"scope": "s", "key": "k" * 2000}, "key must be"),
                ("state::delete", ["s", "k"], "state::delete needs"),
                ("state::list", {}, "state::list needs"),
            ):
                with pytest.raises(EngineError) as info:
                    await w.call(function, data)
                assert info.value.code == "invalid_argument" and words in info.value.message, info.value


async def test_triggers_get_events_after_the_write_with_filters_and_in_order() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[state.SPEC], store=MemoryStore()) as parts:
            w = await parts.worker("watch")
            everything = await recorder(w, "watch.all")
            users = await recorder(w, "watch.users")
            profile = await recorder(w, "watch.profile")
            await w.register_trigger("state", "watch.all")
            await w.register_trigger("state", "watch.users", {"scope": "users"})
            await w.register_trigger("state", "watch.profile", {"scope": "users", "key": "profile"})
            await w.call("state::set", {"scope": "users", "key": "profile", "value": {"v": 1}}, traceparent=TP)
            await w.call("state::set", {"scope": "users", "key": "profile", "value": {"v": 1}})  # unchanged: no event
            await w.call("state::update", {"scope": "users", "key": "profile", "ops": [
                {"type": "set", "path": "v", "value": 2}]})
            await w.call("state::update", {"scope": "users", "key": "profile", "ops": [
                {"type": "merge", "value": {}}]})  # unchanged too
            await w.call("state::set", {"scope": "users", "key": "other", "value": 1})
            await w.call("state::set", {"scope": "orders", "key": "o1", "value": 1})
            await w.call("state::delete", {"scope": "users", "key": "profile"})
            await w.call("state::delete", {"scope": "users", "key": "profile"})  # nothing there: no event
            await settle()
            assert profile == [
                {"type": "state", "event_type": "created", "scope": "users", "key": "profile", "old_value": None,
                 "new_value": {"v": 1}},
                {"type": "state", "event_type": "updated", "scope": "users", "key": "profile",
                 "old_value": {"v": 1}, "new_value": {"v": 2}},
                {"type": "state", "event_type": "deleted", "scope": "users", "key": "profile",
                 "old_value": {"v": 2}, "new_value": None},
            ]
            assert [(e["key"], e["event_type"]) for e in users] == [
                ("profile", "created"), ("profile", "updated"), ("other", "created"), ("profile", "deleted")]
            assert [(e["scope"], e["key"]) for e in everything] == [
                ("users", "profile"), ("users", "profile"), ("users", "other"), ("orders", "o1"), ("users", "profile")]
            # the handler's call continues the writer's trace
            first = next(e for e in w.received if isinstance(e, InvokeFunction) and e.function_id == "watch.profile")
            assert first.traceparent is not None and first.traceparent.split("-")[1] == TP.split("-")[1]
            for config, words in (({"scope": 5}, "scope must be a string"), ({"table": "x"}, "'table'")):
                with pytest.raises(TriggerRegistrationError, match=words):
                    await w.register_trigger("state", "watch.all", config)


async def test_the_seeds_condition_snippet_selects_events() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[state.SPEC], store=MemoryStore()) as parts:
            w = await parts.worker("seed")

            async def profile_changed(event: Any) -> bool:  # the seed's condition, as written
                return event.get("event_type") == "updated" and event.get("key") == "profile"

            await w.register_function("conditions::profileChanged", profile_changed)
            updates = await recorder(w, "state::onProfileUpdate", {})
            await w.register_trigger("state", "state::onProfileUpdate",
                                     {"scope": "users", "condition_function_id": "conditions::profileChanged"})
            for value in (1, 2, 3):
                await w.call("state::set", {"scope": "users", "key": "profile", "value": value})
            await w.call("state::set", {"scope": "users", "key": "email", "value": 1})
            await w.call("state::set", {"scope": "users", "key": "email", "value": 2})
            await settle()
            assert [(e["old_value"], e["new_value"]) for e in updates] == [(1, 2), (2, 3)]


async def test_many_writes_of_one_key_reach_the_trigger_in_commit_order() -> None:
    with trio.fail_after(20):
        async with engine_parts(modules=[state.SPEC], store=MemoryStore()) as parts:
            a, b = await parts.worker("a"), await parts.worker("b")
            seen = await recorder(a, "a.seen")
            await a.register_trigger("state", "a.seen", {"key": "n"})

            async def bump(w: FakeWorker) -> None:
                for _ in range(100):
                    await w.call("state::update", {"scope": "s", "key": "n", "ops": [{"type": "increment"}]})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bump, a)
                nursery.start_soon(bump, b)
            while len(seen) < 200:
                await trio.sleep(0.01)
            assert [e["new_value"] for e in seen] == list(range(1, 201))
            assert all(e["old_value"] == e["new_value"] - 1 for e in seen[1:])


async def test_a_slow_trigger_drops_events_instead_of_slowing_writers() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[state.SPEC], store=MemoryStore(),
                                config={"state": {"trigger_buffer": 3}}) as parts:
            w = await parts.worker()
            release = trio.Event()

            async def slow(_: Any) -> None:
                await release.wait()

            await w.register_function("w.slow", slow)
            tid = await w.register_trigger("state", "w.slow")
            for i in range(20):
                await w.call("state::set", {"scope": "s", "key": "k", "value": i})
            sub = parts.modules["state"]._subscriptions[tid]  # type: ignore[attr-defined]
            assert sub.dropped == 20 - 3 - 1  # one in the handler, three queued
            release.set()


async def test_values_survive_a_restart_of_the_module_and_a_failed_write_is_undone() -> None:
    store = MemoryStore()
    with trio.fail_after(10):
        async with engine_parts(modules=[state.SPEC], store=store) as parts:
            w = await parts.worker()
            events = await recorder(w, "w.on")
            await w.register_trigger("state", "w.on")
            await w.call("state::set", {"scope": "s", "key": "k", "value": {"a": [1, 2]}})
            await w.call("state::set", {"scope": "s", "key": "gone", "value": 1})
            await w.call("state::delete", {"scope": "s", "key": "gone"})
            store.fail_next = 1
            with pytest.raises(EngineError) as info:
                await w.call("state::set", {"scope": "s", "key": "k", "value": "lost"})
            assert info.value.code == "store_full"
            assert await w.call("state::get", {"scope": "s", "key": "k"}) == {"a": [1, 2]}  # taken back
            await settle()
            assert [e["event_type"] for e in events] == ["created", "created", "deleted"]  # none for the failed one
        async with engine_parts(modules=[state.SPEC], store=store) as parts:  # the same data, a new module
            w = await parts.worker()
            assert await w.call("state::list", {"scope": "s", "include_keys": True}) == [
                {"key": "k", "value": {"a": [1, 2]}}]
            module = parts.modules["state"]
            assert isinstance(module, StateModule)


async def test_a_value_nested_too_deep_for_json_is_refused_cleanly() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[state.SPEC], store=MemoryStore()) as parts:
            w = await parts.worker()
            deep: Any = []
            for _ in range(300):
                deep = [deep]
            with pytest.raises(EngineError) as info:  # (in-process: our codec would not even send it)
                await parts.invoker.call("state::set", {"scope": "s", "key": "k", "value": deep})
            assert info.value.code == "invalid_argument" and "cannot be stored as JSON" in info.value.message
            assert await w.call("state::get", {"scope": "s", "key": "k"}) is None
