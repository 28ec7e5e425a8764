"""The log module in-process: entries from calls and printed lines, the ring buffer, log triggers."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from iii_supervisor.errors import EngineError, TriggerRegistrationError
from iii_supervisor.modules import log
from iii_supervisor.modules.log import LogModule, format_entry, level_rank
from iii_supervisor.protocol import InvokeFunction
from iii_supervisor.tracing import (
    LOG_ORIGIN,
    child_traceparent,
    ensure_traceparent,
    from_log_trigger,
    mark_log_trigger,
    new_traceparent,
    parse_traceparent,
)
from iii_supervisor.worker_lines import LineContext, WorkerLines, tag, untag
from inprocess import FakeWorker, engine_parts

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def module(parts: Any) -> LogModule:
    mod = parts.modules["log"]
    assert isinstance(mod, LogModule)
    return mod


async def settle() -> None:
    for _ in range(20):
        await trio.sleep(0.005)


# --- pure parts -----------------------------------------------------------------------------------


def test_traceparent_helpers() -> None:
    assert parse_traceparent(TP) == (TRACE, "00f067aa0ba902b7")
    for bad in (None, 5, "", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", TP.replace("00f067aa0ba902b7", "0" * 16),
                "ff" + TP[2:], TP.upper(), TP[:-1], TP + "x", "00-xyz"):
        assert parse_traceparent(bad) is None, bad
    assert ensure_traceparent(TP) == TP
    assert ensure_traceparent("garbage") != "garbage" and parse_traceparent(ensure_traceparent("garbage"))
    child = child_traceparent(TP)
    assert parse_traceparent(child)[0] == TRACE and child != TP  # type: ignore[index]
    assert parse_traceparent(new_traceparent()) is not None
    assert from_log_trigger(mark_log_trigger("a=1")) and not from_log_trigger("a=1") and not from_log_trigger(None)
    assert mark_log_trigger(mark_log_trigger(None)).count(LOG_ORIGIN) == 1


def test_line_tags_round_trip_and_garbage_is_relayed_as_is() -> None:
    context = LineContext("w.f", TP, True)
    line = (tag(context) + "hello").encode()
    assert untag(line) == (b"hello", context)
    assert untag(b"plain line") == (b"plain line", None)
    for garbage in (b"\x1eiii:{not json\x1erest", b"\x1eiii:[1,2]\x1erest", b"\x1eiii:no end", b"\x1eiii:\x1e"):
        assert untag(garbage) == (garbage, None)
    assert untag(b'\x1eiii:{"f":5,"t":[]}\x1ex') == (b"x", LineContext(None, None, False))


def test_levels() -> None:
    assert level_rank(None, what="x") == level_rank("all", what="x") == 0
    assert level_rank("warning", what="x") == level_rank("WARN", what="x") == 30
    with pytest.raises(ValueError, match="level must be one of debug, info, warn, error or 'all', got 'loud'"):
        level_rank("loud", what="level")


def test_format_entry() -> None:
    entry = {"date": "2026-12-01T09:30:17.123Z", "level": "warn", "message": "disk", "data": {"free": 1},
             "worker_name": "api", "function_name": "api.clean", "trace_id": TRACE}
    assert format_entry(entry) == f'09:30:17.123 WARN  api api.clean: disk {{"free":1}} [trace {TRACE}]'


# --- entries ----------------------------------------------------------------------------------------


async def test_log_builtins_record_entries_with_the_callers_name_and_trace() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC]) as parts:
            w = await parts.worker("api")
            assert await w.call("engine::log::warn", {"message": "low disk", "data": {"free": 3},
                                                      "function_name": "api.clean"}, traceparent=TP) is None
            await w.call("engine::log::info", "just text")
            with pytest.raises(EngineError) as info:
                await w.call("engine::log::error", {"message": 5})
            assert info.value.code == "invalid_argument" and "{'message': 5}" in info.value.message
            entries = (await w.call("engine::logs::list"))["entries"]
            assert [(e["level"], e["message"]) for e in entries] == [("warn", "low disk"), ("info", "just text")]
            first = entries[0]
            assert first["worker_name"] == "api" and first["function_name"] == "api.clean"
            assert first["trace_id"] == TRACE and first["span_id"] == "00f067aa0ba902b7"
            assert first["data"] == {"free": 3} and first["date"].endswith("Z")
            assert entries[1]["trace_id"] is not None  # the engine gave the call a trace


async def test_printed_lines_become_entries_with_the_tags_context() -> None:
    lines = WorkerLines()
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC], worker_lines=lines) as parts:
            lines.line("users", 42, b"plain", False, None)
            lines.line("users", 42, b"boom", True, LineContext("users.create", TP))
            lines.line("users", 42, b"   ", False, None)  # blank: not an entry
            lines.line("users", 42, b"\xff\xfe bytes", False, None)
            entries = module(parts).entries
            assert [(e["level"], e["message"], e["source"]) for e in entries] == [
                ("info", "plain", "stdout"), ("error", "boom", "stderr"), ("info", "\ufffd\ufffd bytes", "stdout")]
            assert entries[1]["function_name"] == "users.create" and entries[1]["trace_id"] == TRACE
            assert entries[0]["worker_name"] == "users" and entries[0]["function_name"] is None


async def test_list_filters_cursor_limit_and_ring_buffer() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC], config={"log": {"buffer_size": 5}}) as parts:
            mod = module(parts)
            for i in range(8):
                mod.record(["debug", "info", "warn", "error"][i % 4], f"m{i}", worker_name=f"w{i % 2}",
                           trace_id=TRACE if i == 6 else None)
            w = await parts.worker()
            listed = await w.call("engine::logs::list")
            assert [e["message"] for e in listed["entries"]] == ["m3", "m4", "m5", "m6", "m7"]  # the last 5
            assert listed["cursor"] == 8
            assert [e["message"] for e in (await w.call("engine::logs::list", {"level": "warn"}))["entries"]] == [
                "m3", "m6", "m7"]
            assert [e["message"] for e in (await w.call("engine::logs::list", {"worker": "w0"}))["entries"]] == [
                "m4", "m6"]
            assert [e["message"] for e in (await w.call("engine::logs::list", {"trace_id": TRACE}))["entries"]] == [
                "m6"]
            assert [e["message"] for e in (await w.call("engine::logs::list", {"limit": 2}))["entries"]] == [
                "m6", "m7"]
            after = await w.call("engine::logs::list", {"since_id": 5, "limit": 1})
            assert [e["id"] for e in after["entries"]] == [6] and after["cursor"] == 6
            after = await w.call("engine::logs::list", {"since_id": 6, "level": "error"})
            assert [e["id"] for e in after["entries"]] == [8] and after["cursor"] == 8
            assert (await w.call("engine::logs::list", {"since_id": 8}))["entries"] == []
            evicted = await w.call("engine::logs::list", {"since_id": 1})  # gone from the buffer: from the oldest
            assert [e["id"] for e in evicted["entries"]] == [4, 5, 6, 7, 8]
            restarted = await w.call("engine::logs::list", {"since_id": 100})
            assert len(restarted["entries"]) == 5 and restarted["cursor"] == 8
            for bad in ({"level": "loud"}, {"limit": -1}, {"since_id": "x"}, {"limit": True}):
                with pytest.raises(EngineError) as info:
                    await w.call("engine::logs::list", bad)
                assert info.value.code == "invalid_argument" and repr(next(iter(bad.values()))) in info.value.message


async def test_entries_are_bounded_in_size() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC],
                                config={"log": {"max_message_size": 10, "max_data_size": 50}}) as parts:
            entry = module(parts).record("info", "x" * 100, {"blob": "y" * 100})
            assert entry["message"] == "x" * 10 + "… [90 more characters cut]"
            assert entry["data"] == {"truncated": 111}  # bytes of {"blob":"yyy…"}


# --- log triggers -------------------------------------------------------------------------------


async def _collector(worker: FakeWorker, function_id: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def handler(data: Any) -> None:
        got.append(data)

    await worker.register_function(function_id, handler)
    return got


async def test_log_triggers_get_their_level_and_above() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC]) as parts:
            w = await parts.worker("alerts")
            errors, warns, everything, default = [await _collector(w, f"alerts.{n}") for n in "abcd"]
            await w.register_trigger("log", "alerts.a", {"level": "error"})
            await w.register_trigger("log", "alerts.b", {"level": "warn"})
            await w.register_trigger("log", "alerts.c", {"level": "all"})
            await w.register_trigger("log", "alerts.d")
            for level in ("debug", "info", "warn", "error"):
                module(parts).record(level, level, worker_name="api")
            await settle()
            assert [e["level"] for e in errors] == ["error"]
            assert [e["level"] for e in warns] == ["warn", "error"]
            assert [e["level"] for e in everything] == [e["level"] for e in default] == ["debug", "info", "warn",
                                                                                          "error"]
            assert errors[0]["type"] == "log" and errors[0]["message"] == "error" and errors[0]["worker_name"] == "api"
            for config, words in (({"level": "loud"}, "'loud'"), ({"lvl": "x"}, "'lvl'")):
                with pytest.raises(TriggerRegistrationError, match=words):
                    await w.register_trigger("log", "alerts.a", config)


async def test_a_log_handler_that_logs_does_not_loop() -> None:
    lines = WorkerLines()
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC], worker_lines=lines) as parts:
            w = await parts.worker("alerts")
            calls = 0

            async def alert(data: Any) -> None:
                nonlocal calls
                calls += 1
                # what the SDK does inside a handler: the invocation's baggage goes on every call
                msg = next(e for e in reversed(w.received) if isinstance(e, InvokeFunction)
                           and e.function_id == "alerts.on_error")
                assert from_log_trigger(msg.baggage)
                assert parse_traceparent(msg.traceparent)[0] == TRACE  # type: ignore[index]  # the entry's trace
                await w.call("engine::log::error", {"message": f"alert for {data['message']}"}, baggage=msg.baggage,
                             traceparent=msg.traceparent)
                # ... also through a second function it calls, and in what it prints
                await w.call("alerts.helper", None, baggage=msg.baggage)
                lines.line("alerts", 1, b"printed in the handler", True, LineContext("alerts.on_error", None, True))

            async def helper(_: Any) -> None:
                msg = next(e for e in reversed(w.received) if isinstance(e, InvokeFunction)
                           and e.function_id == "alerts.helper")
                await w.call("engine::log::error", {"message": "from the helper"}, baggage=msg.baggage)

            await w.register_function("alerts.on_error", alert)
            await w.register_function("alerts.helper", helper)
            await w.register_trigger("log", "alerts.on_error", {"level": "error"})
            await w.call("engine::log::error", {"message": "disk failed"}, traceparent=TP)
            await settle()
            assert calls == 1
            messages = [e["message"] for e in module(parts).entries]
            assert messages == ["disk failed", "alert for disk failed", "from the helper", "printed in the handler"]


async def test_a_slow_log_handler_drops_and_counts_instead_of_blocking() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC], config={"log": {"trigger_buffer": 4}}) as parts:
            w = await parts.worker("slow")
            release = trio.Event()
            seen: list[str] = []

            async def slow(data: Any) -> None:
                seen.append(data["message"])
                await release.wait()

            await w.register_function("slow.h", slow)
            tid = await w.register_trigger("log", "slow.h")
            mod = module(parts)
            mod.record("info", "first")
            await settle()  # the handler is busy with "first"
            for i in range(100):  # (synchronous: recording cannot wait for the handler)
                mod.record("info", f"m{i}")
            release.set()
            await settle()
            assert seen == ["first", "m0", "m1", "m2", "m3"]
            stats = (await w.call("engine::logs::list", {"limit": 0}))["triggers"]
            assert stats == [{"id": tid, "function_id": "slow.h", "delivered": 5, "dropped": 96, "failed": 0}]


async def test_unregistered_log_trigger_stops_getting_entries() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC]) as parts:
            w = await parts.worker()
            got = await _collector(w, "w.h")
            tid = await w.register_trigger("log", "w.h")
            module(parts).record("info", "one")
            await settle()
            w.unregister_trigger(tid)
            await settle()
            module(parts).record("info", "two")
            await settle()
            assert [e["message"] for e in got] == ["one"]


async def test_a_listing_stays_within_its_byte_budget_and_the_cursor_goes_on() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC], config={"log": {"max_message_size": 1024 * 1024}}) as parts:
            mod = module(parts)
            big = "x" * (1024 * 1024)
            for _ in range(10):
                mod.record("info", big)
            w = await parts.worker()
            tail = await w.call("engine::logs::list", {"limit": 10})
            assert 1 <= len(tail["entries"]) <= 4 and tail["entries"][-1]["id"] == 10  # the newest ones
            seen, cursor = [], 0
            while cursor < 10:
                page = await w.call("engine::logs::list", {"since_id": cursor, "limit": 10})
                assert page["entries"]
                seen += [e["id"] for e in page["entries"]]
                cursor = page["cursor"]
            assert seen == list(range(1, 11))


async def test_the_supervisors_own_messages_are_entries_but_not_fed_to_triggers() -> None:
    import logging
    import threading

    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC]) as parts:
            w = await parts.worker()
            got = await _collector(w, "w.h")
            await w.register_trigger("log", "w.h")
            logging.getLogger("iii_supervisor.process.pool").warning("worker %s exited with code %d", "api", 3)
            logging.getLogger("iii_supervisor.store").debug("below info: not kept")
            thread = threading.Thread(target=lambda: logging.getLogger("iii_supervisor.store").error("from a thread"))
            thread.start()
            thread.join()
            await settle()
            entries = [(e["worker_name"], e["level"], e["message"], e["source"]) for e in module(parts).entries]
            assert entries == [("iii-supervisor", "warn", "worker api exited with code 3", "supervisor"),
                               ("iii-supervisor", "error", "from a thread", "supervisor")]
            assert got == []
        logging.getLogger("iii_supervisor").warning("after the module stopped")  # (its handler is gone)


async def test_data_nested_too_deep_for_json_does_not_fail_the_entry() -> None:
    with trio.fail_after(10):
        async with engine_parts(modules=[log.SPEC]) as parts:
            deep: Any = []
            for _ in range(300):
                deep = [deep]
            # (no client of ours can send this: the codec refuses to encode it; a foreign one could)
            await parts.invoker.call("engine::log::info", {"message": "deep", "data": deep})
            (entry,) = module(parts).entries
            assert entry["message"] == "deep" and "unencodable" in entry["data"]
