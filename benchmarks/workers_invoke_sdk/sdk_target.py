"""Benchmark target on the official iii SDK (B'): an async echo (runs on the SDK's event loop)."""

from iii import register_worker

iii = register_worker()


async def echo(data):
    return data


iii.register_function("sdkbench.echo", echo, description="benchmark: echo (official SDK, async)")
