"""Benchmark target worker (B): the routed echo that state calls are compared with."""

from iii_supervisor import register_worker

iii = register_worker()


async def echo(data):
    return data


iii.register_function({"id": "bench.echo", "description": "benchmark: async echo"}, echo)
