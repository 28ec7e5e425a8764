"""Benchmark driver on the official iii SDK (A'): the same loops as workers_invoke/driver.py, inside
an ``iii-sdk`` worker connected to the supervisor's iii door (A' → supervisor → B' → supervisor → A',
both over WebSocket). ``sdkbench.run`` takes and returns what ``bench.run`` does."""

import asyncio
import sys
import time
from pathlib import Path

from iii import register_worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the harness's shared helpers
from _common import latency_stats  # noqa: E402

iii = register_worker()


async def _seq(req, payload, count, seconds):
    perf = time.perf_counter
    latencies, mismatches, calls = [], 0, 0
    cpu0 = time.process_time()
    start = now = perf()
    deadline = start + seconds
    while calls < count and now < deadline:
        t0 = perf()
        result = await iii.trigger_async(req)
        now = perf()
        latencies.append(now - t0)
        calls += 1
        mismatches += result != payload
    stats = latency_stats(latencies, calls, perf() - start, mismatches)
    stats["driver_cpu_s"] = time.process_time() - cpu0
    return stats


async def _inflight(req, payload, count, seconds, concurrency):
    perf = time.perf_counter
    latencies = []
    state = {"issued": 0, "done": 0, "mismatches": 0}
    cpu0 = time.process_time()
    start = perf()
    deadline = start + seconds

    async def caller():
        while state["issued"] < count and perf() < deadline:
            state["issued"] += 1
            t0 = perf()
            result = await iii.trigger_async(req)
            latencies.append(perf() - t0)
            state["done"] += 1
            state["mismatches"] += result != payload

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    stats = latency_stats(latencies, state["done"], perf() - start, state["mismatches"])
    stats["driver_cpu_s"] = time.process_time() - cpu0
    return stats


async def run(params):
    payload = params.get("payload", {"x": 1})
    req = {"function_id": params["target"], "payload": payload}
    count, seconds = int(params["count"]), float(params["seconds"])
    if params["mode"] == "seq":
        return await _seq(req, payload, count, seconds)
    return await _inflight(req, payload, count, seconds, int(params.get("concurrency", 64)))


iii.register_function("sdkbench.run", run, description="benchmark: a routed-call loop on the official SDK")
