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
The loop is ``_common.call_loop``, shared with the official-SDK driver (``workers_invoke_sdk``).
"""

import sys
from pathlib import Path

import trio

from iii_supervisor import register_worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the harness's shared helpers
from _common import call_loop  # noqa: E402

iii = register_worker()


async def run_all(task, n):
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(task)


async def run(params):
    return await call_loop(params, iii.trigger_async, run_all)


iii.register_function({"id": "bench.run", "description": "benchmark: run a routed-call measurement loop"}, run)
