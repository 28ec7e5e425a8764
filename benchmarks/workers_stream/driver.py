"""Benchmark driver worker for bench_stream.py: calls ``stream::set`` in a loop.

``bench.stream_run {seconds, rate, inflight, pad}``: for ``seconds``, ``stream::set`` of
``{"t": <CLOCK_MONOTONIC ns at the call>, "pad": ...}`` on ``bench/g/item`` — as fast as
``inflight`` concurrent calls allow (``rate`` 0: saturated) or paced at ``rate`` sets/s.
Returns how many sets were made.
"""

import time

import trio

from iii_supervisor import register_worker

iii = register_worker()


async def run(params):
    seconds, rate = float(params["seconds"]), float(params.get("rate", 0))
    inflight, pad = int(params.get("inflight", 32)), "p" * int(params.get("pad", 100))
    deadline = time.monotonic() + seconds
    done = 0

    async def one(i):
        nonlocal done
        await iii.trigger_async({"function_id": "stream::set", "payload": {
            "stream_name": "bench", "group_id": "g", "item_id": f"i{i % 16}",
            "data": {"t": time.monotonic_ns(), "pad": pad}}})
        done += 1

    if rate <= 0:
        async def loop(k):
            i = k
            while time.monotonic() < deadline:
                await one(i)
                i += inflight

        async with trio.open_nursery() as nursery:
            for k in range(inflight):
                nursery.start_soon(loop, k)
    else:
        limiter = trio.CapacityLimiter(inflight)

        async def paced(i):
            async with limiter:
                await one(i)

        start = time.monotonic()
        async with trio.open_nursery() as nursery:
            i = 0
            while time.monotonic() < deadline:
                due = start + i / rate
                now = time.monotonic()
                if due > now:
                    await trio.sleep(due - now)
                nursery.start_soon(paced, i)
                i += 1
    return {"sets": done}


iii.register_function({"id": "bench.stream_run"}, run)
