"""Benchmark target worker (B): trivial echo functions, one sync and one async.

- ``bench.echo_sync``: a plain function, so the SDK runs it in a thread (``trio.to_thread``).
- ``bench.echo_async``: a coroutine function, run as a task on the worker's trio loop.
"""

from iii_supervisor import register_worker

iii = register_worker()


def echo_sync(data):
    return data


async def echo_async(data):
    return data


iii.register_function({"id": "bench.echo_sync", "description": "benchmark: sync echo"}, echo_sync)
iii.register_function({"id": "bench.echo_async", "description": "benchmark: async echo"}, echo_async)
