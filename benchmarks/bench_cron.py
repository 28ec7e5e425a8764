"""Cron module cost: registering 10,000 jobs, and what they cost while idle.

    python benchmarks/bench_cron.py [--jobs N] [--idle SECONDS]

Registers N ``cron`` triggers through the registry (as a worker's ``registertrigger`` does:
validation with croniter, first tick, heap entry) with one shared expression, then with N
distinct expressions, and measures the supervisor process's CPU time while the jobs wait
(the scheduler wakes every ``clock_check_interval``; no task per job).
"""

from __future__ import annotations

import argparse
import time

import trio

from iii_supervisor.invocation import Invoker
from iii_supervisor.modules.cron import CronConfig, CronModule
from iii_supervisor.modules.cron_schedule import _iterator, _next_tick
from iii_supervisor.registry import Registry, TriggerEntry


async def measure(jobs: int, idle: float, distinct: bool) -> tuple[float, float, float, int]:
    registry = Registry()
    invoker = Invoker(registry)
    module = CronModule(CronConfig(), registry, invoker, default_timeout=30.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(invoker.run)
        await nursery.start(module.run)
        _iterator.cache_clear()
        _next_tick.cache_clear()
        start, start_cpu = time.perf_counter(), time.process_time()
        for i in range(jobs):
            # daily jobs, so that none fires during the idle measurement
            expression = f"{i % 60} {i // 60 % 60} {i // 3600 % 24} * * *" if distinct else "0 0 2 * * *"
            registry.add_trigger(TriggerEntry(f"job-{i}", "cron", "bench.job", {"expression": expression}, None))
        register, register_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        cpu = time.process_time()
        await trio.sleep(idle)
        idle_cpu = time.process_time() - cpu
        count = len(module.jobs)
        nursery.cancel_scope.cancel()
    return register, register_cpu, idle_cpu, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    print(f"| {args.jobs} cron jobs | register (s) | CPU (s) | CPU per job (µs) "
          f"| CPU while idle {args.idle:g} s (ms) |")
    print("|---|---|---|---|---|")
    for distinct in (False, True):
        register, cpu, idle_cpu, count = trio.run(measure, args.jobs, args.idle, distinct)
        assert count == args.jobs
        label = "distinct expressions" if distinct else "one shared expression"
        print(f"| {label} | {register:.3f} | {cpu:.3f} | {cpu / args.jobs * 1e6:.0f} | {idle_cpu * 1000:.1f} |")


if __name__ == "__main__":
    main()
