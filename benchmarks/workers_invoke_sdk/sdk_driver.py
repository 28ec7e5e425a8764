"""Benchmark driver worker (A) on the official Python SDK (``iii-sdk``, import ``iii``), unmodified:
the twin of ``workers_invoke/driver.py`` over the supervisor's WebSocket door (the supervisor
spawns it with ``III_URL``/``III_TOKEN`` and ``III_WORKER_NAME``).

``sdkbench.run`` (async, so it runs on the SDK's asyncio loop) takes the parameters of
``bench.run`` and runs the same loop (``_common.call_loop``): ``await iii.trigger_async(...)``
(A -> supervisor -> B -> supervisor -> A) one at a time, or from ``concurrency`` asyncio tasks.
"""

import asyncio
import sys
from pathlib import Path

from iii import register_worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: the harness's shared helpers
from _common import call_loop  # noqa: E402

iii = register_worker()


async def run_all(task, n):
    await asyncio.gather(*(task() for _ in range(n)))


async def run(params):
    return await call_loop(params, iii.trigger_async, run_all)


iii.register_function("sdkbench.run", run, description="benchmark: run a routed-call measurement loop")
