"""Benchmark driver worker (A): runs the measurement loops *inside* a worker.

``bench.run`` (async, so it runs on this worker's trio loop) takes::

    {"mode": "seq" | "inflight", "target": "bench.echo_sync" | "bench.echo_async",
     "count": N, "seconds": S, "concurrency": 64, "payload": {...}}

and calls ``target`` through the supervisor (A -> supervisor -> B -> supervisor -> A) until
``count`` calls have completed or ``seconds`` have passed, whichever comes first:

- ``seq``: one call at a time (``await iii.trigger_async``), per-call latency recorded;
- ``inflight``: ``concurrency`` trio tasks, each awaiting ``iii.trigger_async`` in a loop.

It returns the stats as JSON: calls, elapsed_s, calls_per_s, latency percentiles (ms),
mismatches (echo results that differ from the payload) and the driver's own CPU seconds.
"""

import sys
import time
from pathlib import Path

import trio

from iii_supervisor import register_worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the harness's shared helpers
from _common import latency_stats  # noqa: E402

iii = register_worker()


def _stats(latencies, calls, elapsed, mismatches, cpu):
    stats = latency_stats(latencies, calls, elapsed, mismatches)
    stats["driver_cpu_s"] = cpu
    return stats


async def _seq(target, payload, count, seconds):
    trigger = iii.trigger_async
    req = {"function_id": target, "payload": payload}
    perf = time.perf_counter
    latencies = []
    append = latencies.append
    mismatches = 0
    cpu0 = time.process_time()
    start = perf()
    deadline = start + seconds
    calls = 0
    now = start
    while calls < count and now < deadline:
        t0 = perf()
        result = await trigger(req)
        now = perf()
        append(now - t0)
        calls += 1
        if result != payload:
            mismatches += 1
    elapsed = perf() - start
    return _stats(latencies, calls, elapsed, mismatches, time.process_time() - cpu0)


async def _inflight(target, payload, count, seconds, concurrency):
    trigger = iii.trigger_async
    req = {"function_id": target, "payload": payload}
    perf = time.perf_counter
    latencies = []
    append = latencies.append
    state = {"issued": 0, "done": 0, "mismatches": 0}
    cpu0 = time.process_time()
    start = perf()
    deadline = start + seconds

    async def caller():
        while state["issued"] < count and perf() < deadline:
            state["issued"] += 1
            t0 = perf()
            result = await trigger(req)
            append(perf() - t0)
            state["done"] += 1
            if result != payload:
                state["mismatches"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(caller)
    elapsed = perf() - start
    return _stats(latencies, state["done"], elapsed, state["mismatches"], time.process_time() - cpu0)


async def run(params):
    mode = params["mode"]
    target = params["target"]
    payload = params.get("payload", {"x": 1})
    count = int(params["count"])
    seconds = float(params["seconds"])
    if mode == "seq":
        return await _seq(target, payload, count, seconds)
    if mode == "inflight":
        return await _inflight(target, payload, count, seconds, int(params.get("concurrency", 64)))
    raise ValueError(f"unknown mode {mode!r} (expected 'seq' or 'inflight')")


iii.register_function({"id": "bench.run", "description": "benchmark: run a routed-call measurement loop"}, run)
