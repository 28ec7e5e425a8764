"""Benchmark producer: enqueues ``n`` messages with ``inflight`` concurrent publishers, then waits
for the consumer to have handled them all; returns the two durations (measured here, in the
producer, so the control socket is not on the path)."""

import time

import trio

from iii_supervisor import register_worker

iii = register_worker()


async def produce(data):
    n, inflight, topic = data["n"], data["inflight"], data.get("topic", "bench")
    await iii.trigger_async({"function_id": "bench.reset", "payload": None})
    counter = iter(range(n))

    async def publisher():
        for i in counter:
            await iii.trigger_async({"function_id": "enqueue", "payload": {"topic": topic, "data": {"i": i}}})

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(inflight):
            nursery.start_soon(publisher)
    enqueued = time.perf_counter()
    if topic == "bench":
        await iii.trigger_async({"function_id": "bench.wait", "payload": {"n": n}, "timeout_ms": 600_000})
    handled = time.perf_counter()
    return {"enqueue_s": enqueued - t0, "e2e_s": handled - t0}


iii.register_function({"id": "bench.produce"}, produce)
