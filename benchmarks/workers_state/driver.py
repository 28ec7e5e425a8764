"""Benchmark driver worker (A) for bench_state.py: measurement loops run inside this worker.

``bench.state_run`` (async) takes ``{"op": "echo" | "set" | "get", "count", "seconds",
"concurrency", "keys"}`` and keeps ``concurrency`` calls in flight (trio tasks each awaiting
``iii.trigger_async`` in a loop) until ``count`` calls completed or ``seconds`` passed:

- ``echo``: ``bench.echo`` on the target worker (A → supervisor → B → supervisor → A);
- ``set``: ``state::set`` of ``{"n": i}`` to one of ``keys`` keys (a built-in: A → supervisor → A,
  acknowledged once the store committed it);
- ``get``: ``state::get`` of one of those keys (served from memory).

Returns calls, calls/s, latency percentiles (ms) and mismatches.
"""

import sys
import time
from pathlib import Path

import trio

from iii_supervisor import register_worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the shared helpers
from _common import latency_stats  # noqa: E402

iii = register_worker()


async def run(params):
    op, count, seconds = params["op"], int(params["count"]), float(params["seconds"])
    keys, concurrency = int(params.get("keys", 1000)), int(params.get("concurrency", 64))
    trigger = iii.trigger_async
    perf = time.perf_counter
    latencies = []
    state = {"issued": 0, "done": 0, "mismatches": 0}
    start = perf()
    deadline = start + seconds

    def request(i):
        key = f"k{i % keys}"
        if op == "echo":
            return {"function_id": "bench.echo", "payload": {"x": i}}, {"x": i}
        if op == "set":
            return {"function_id": "state::set", "payload": {"scope": "bench", "key": key, "value": {"n": i}}}, None
        return {"function_id": "state::get", "payload": {"scope": "bench", "key": key}}, None

    async def caller():
        while state["issued"] < count and perf() < deadline:
            i = state["issued"]
            state["issued"] += 1
            req, expected = request(i)
            t0 = perf()
            result = await trigger(req)
            latencies.append(perf() - t0)
            state["done"] += 1
            if (op == "echo" and result != expected) or (op == "set" and result["new_value"] != {"n": i}) or (
                    op == "get" and not isinstance(result, dict)):
                state["mismatches"] += 1

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(caller)
    return latency_stats(latencies, state["done"], perf() - start, state["mismatches"])


iii.register_function({"id": "bench.state_run", "description": "benchmark: state / echo loops"}, run)
