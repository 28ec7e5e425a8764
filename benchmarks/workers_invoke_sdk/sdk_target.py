"""Benchmark target worker (B) on the official Python SDK (``iii-sdk``, import ``iii``), unmodified:
the supervisor spawns it with ``III_URL``/``III_TOKEN`` (the WebSocket door) and ``III_WORKER_NAME``.

- ``sdkbench.echo_sync``: a plain function (the SDK runs it on a thread of its own per call);
- ``sdkbench.echo_async``: a coroutine function, run on the SDK's asyncio loop.
"""

from iii import register_worker

iii = register_worker()


def echo_sync(data):
    return data


async def echo_async(data):
    return data


iii.register_function("sdkbench.echo_sync", echo_sync, description="benchmark: sync echo")
iii.register_function("sdkbench.echo_async", echo_async, description="benchmark: async echo")
