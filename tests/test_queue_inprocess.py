"""The queue module in-process: the engine's parts, fake workers over socket pairs, a real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from iii_supervisor.errors import EnqueueError, StoreFull, TriggerRegistrationError
from iii_supervisor.modules import queue
from iii_supervisor.protocol import Action, InvokeFunction
from iii_supervisor.store import SqliteStore
from inprocess import EngineParts, engine_parts


@asynccontextmanager
async def queue_parts(data_dir: Path, config: dict[str, Any] | None = None) -> AsyncIterator[EngineParts]:
    store = SqliteStore(data_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        async with engine_parts([queue.SPEC], config, store=store) as parts:
            yield parts
        nursery.cancel_scope.cancel()


async def test_disk_full_fails_that_enqueue_and_keeps_the_earlier_messages(tmp_path: Path) -> None:
    got: list[int] = []
    gate = trio.Event()

    async def handle(data: Any) -> None:
        await gate.wait()  # held: the messages stay on disk until the database is full
        got.append(data["i"])

    with trio.fail_after(20):
        async with queue_parts(tmp_path) as parts:
            store = parts.modules["queue"].store  # type: ignore[attr-defined]
            consumer = await parts.worker("consumer")
            await consumer.register_function("c.handle", handle)
            producer = await parts.worker("producer")

            async def enqueue(i: int) -> None:
                await producer.call("engine::queue::enqueue", {"queue": "default", "function_id": "c.handle",
                                                               "data": {"i": i, "pad": "x" * 3000}})

            for i in range(3):
                await enqueue(i)
            pages = await store.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
            await store.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 1}"))
            failed_at = None
            for i in range(3, 40):
                try:
                    await enqueue(i)
                except StoreFull as exc:
                    assert str(tmp_path) in exc.message
                    failed_at = i
                    break
            assert failed_at is not None, "the database never filled up"
            await store.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
            gate.set()
            while len(got) < failed_at:
                await trio.sleep(0.01)
            await trio.sleep(0.1)
    assert sorted(got) == list(range(failed_at))  # every accepted message, and nothing refused


async def test_enqueue_action_data_checks_and_unregistered_subscription(tmp_path: Path) -> None:
    seen: list[Any] = []
    with trio.fail_after(20):
        async with queue_parts(tmp_path, {"queues": {"q": {"concurrency": 1}}}) as parts:
            module = parts.modules["queue"]
            with pytest.raises(EnqueueError, match="not JSON-serialisable"):
                await module.publish("t", {1, 2})  # type: ignore[attr-defined]
            with pytest.raises(EnqueueError, match="unknown queue 5"):
                await module.enqueue(5, "f", None)  # type: ignore[attr-defined]
            worker = await parts.worker("w")

            async def handle(data: Any) -> None:
                seen.append(data)

            await worker.register_function("w.handle", handle)
            trigger = await worker.register_trigger("queue", "w.handle", {"topic": "t"})
            with pytest.raises(TriggerRegistrationError, match="queue_config.concurrency"):
                await worker.register_trigger("queue", "w.handle", {"topic": "t", "queue_config": {"concurrency": -1}})
            # the action reaches the module through the registry's handler
            answer = await worker.call_raw("w.handle", {"via": "action"}, action=Action(type="enqueue", queue="q"))
            assert answer.error is None and "messageReceiptId" in answer.result
            await module.publish("t", {"n": 1})  # type: ignore[attr-defined]
            while len(seen) < 2:
                await trio.sleep(0.01)
            worker.unregister_trigger(trigger)  # unsubscribed (kept for the retention): messages wait
            await trio.sleep(0.05)
            await module.publish("t", {"n": 2})  # type: ignore[attr-defined]
            await trio.sleep(0.2)
            assert {"n": 2} not in seen
            await worker.register_trigger("queue", "w.handle", {"topic": "t"})
            while {"n": 2} not in seen:
                await trio.sleep(0.01)
            assert sorted(map(str, seen)) == sorted(map(str, [{"via": "action"}, {"n": 1}, {"n": 2}]))
            worker.send(InvokeFunction(function_id="enqueue", data={"topic": "t", "data": "void"}))
            while "void" not in seen:
                await trio.sleep(0.01)
