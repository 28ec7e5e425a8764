#!/usr/bin/env python3
"""State benchmark: ``state::set`` / ``state::get`` calls/s from a worker, beside routed echo calls.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_state.py            # full run (~30 s)
    .venv/bin/python benchmarks/bench_state.py --quick    # smoke run

What it does: starts a real supervisor on ``benchmarks/workers_state`` with a temporary runtime
and data directory (the embedded SQLite store, ``synchronous=full``: every acknowledged write is
fsynced). The ``driver`` worker keeps 64 calls in flight of, in turn:

- ``echo``: a routed call to the ``target`` worker (A → supervisor → B → supervisor → A), the peer;
- ``set``: ``state::set`` on 1,000 keys (A → supervisor → A, answered after the group commit);
- ``get``: ``state::get`` of those keys (answered from memory).

Scenarios are interleaved (``--reps``, default 3) and the median of each is reported with the
ratio to echo. The *store's cost* of a set is its time per call beyond a get's (same path, no
write): ``1/set − 1/get``, compared with the time of one routed echo call (target: under a
quarter). CPU per call of the supervisor and the driver is sampled with psutil. Raw numbers go
to ``benchmarks/results/state.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from _common import (
    HERE,
    NOISY_CORES,
    CpuSampler,
    Supervisor,
    fmt_cell,
    fmt_k,
    median,
    spread,
    table,
    wait_quiet,
    write_result,
)

WORKERS_DIR = HERE / "workers_state"
DEFAULT_OUTPUT = HERE / "results" / "state.json"
SCENARIOS = [("echo", "routed echo call (peer)"), ("set", "state::set"), ("get", "state::get")]
TARGET_FRACTION = 0.25


class StateSupervisor(Supervisor):
    """The supervisor of ``workers_state`` with the store's ``store_synchronous`` from a config file."""

    def __init__(self, synchronous: str = "full") -> None:
        super().__init__(WORKERS_DIR, {"bench.state_run", "bench.echo"}, tmp_prefix="iii-s")
        self.synchronous = synchronous
        config = self.tmp / "bench.toml"
        config.write_text(f'[supervisor]\nstore_synchronous = "{synchronous}"\n')
        self.extra_args = ["--config", str(config)]


def measure(sup: Supervisor, sampler: CpuSampler, op: str, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    sampler.start()
    stats = sup.call("bench.state_run", {"op": op, "count": args.count, "seconds": seconds,
                                         "concurrency": args.concurrency, "keys": args.keys}, timeout=seconds + 30)
    noise = sampler.stop()
    calls = max(1, stats["calls"])
    stats["cpu_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["cpu_s"].items()}
    stats["other_cores"] = noise["others_cores"]
    stats["steal_cores"] = noise["steal_cores"]
    return stats


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short rep of each scenario")
    p.add_argument("--reps", type=int, help="interleaved repetitions (default 3; 1 with --quick)")
    p.add_argument("--seconds", type=float, help="seconds per measurement (default 2; 0.6 with --quick)")
    p.add_argument("--count", type=int, default=10**7, help="calls per measurement at most")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--keys", type=int, default=1000, help="distinct keys written and read")
    p.add_argument("--synchronous", choices=["full", "normal"], default="full",
                   help="the store's [supervisor] store_synchronous (default full: fsync at every commit)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.seconds = args.seconds or (0.6 if args.quick else 2.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    print(f"bench_state: reps={args.reps} seconds={args.seconds:g} concurrency={args.concurrency} "
          f"keys={args.keys} synchronous={args.synchronous}; loadavg {os.getloadavg()[0]:.2f}", flush=True)
    wait_quiet(NOISY_CORES, 2.0 if args.quick else 5.0, interval=0.5)
    sup = StateSupervisor(args.synchronous)
    raw: dict[str, list[dict[str, Any]]] = {op: [] for op, _ in SCENARIOS}
    try:
        sup.start()
        assert sup.proc is not None
        sampler = CpuSampler({"supervisor": psutil.Process(sup.proc.pid),
                              **{n: psutil.Process(pid) for n, pid in sup.worker_pids.items()}})
        for op, _ in SCENARIOS:  # warm-up (and the keys exist before the first get)
            measure(sup, sampler, op, args, 0.3)
        for rep in range(args.reps):
            wait_quiet(NOISY_CORES, 1.0 if args.quick else 3.0, interval=0.5)
            for op, _ in SCENARIOS:
                r = measure(sup, sampler, op, args, args.seconds)
                raw[op].append(r)
                noisy = r["other_cores"] + r["steal_cores"] > NOISY_CORES
                print(f"  rep {rep + 1} {op:<5} {fmt_k(r['calls_per_s']):>7} calls/s  p50 {r['p50_ms']:.2f} ms  "
                      f"p99 {r['p99_ms']:.2f} ms  ({r['calls']} calls, {r['mismatches']} mismatches)"
                      + ("  NOISY" if noisy else ""), flush=True)
    finally:
        sup.stop()
        sup.cleanup()

    summary = {op: {**spread(runs, ("calls_per_s", "p50_ms", "p99_ms")),
                    "cpu_us_per_call": {k: median([r["cpu_us_per_call"][k] for r in runs])
                                        for k in runs[0]["cpu_us_per_call"]},
                    "mismatches": sum(r["mismatches"] for r in runs)} for op, runs in raw.items()}
    echo = summary["echo"]["calls_per_s"]
    rows = []
    for op, label in SCENARIOS:
        s = summary[op]
        cpu = "  ".join(f"{n} {v:.0f}" for n, v in s["cpu_us_per_call"].items())
        rows.append([label, fmt_cell(s, "calls_per_s", fmt_k, args.reps), f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
                     f"{s['calls_per_s'] / echo:.2f}x", cpu])
    print()
    print(f"## state::set / state::get vs routed echo, {args.concurrency} in flight from a worker, "
          f"store synchronous={args.synchronous} "
          f"(median of {args.reps} interleaved rep(s), {args.seconds:g} s each; [min–max])")
    print()
    print(table(["calls", "calls/s", "p50 ms", "p99 ms", "ratio to echo", "CPU µs per call"], rows))
    routed_us = 1e6 / echo
    store_us = 1e6 / summary["set"]["calls_per_s"] - 1e6 / summary["get"]["calls_per_s"]
    met = store_us < TARGET_FRACTION * routed_us
    print()
    print(f"store cost of a set (1/set − 1/get): {store_us:.1f} µs per call = {store_us / routed_us:.2f} of a routed "
          f"echo call ({routed_us:.1f} µs); target < {TARGET_FRACTION}: {'MET' if met else 'NOT MET'}")
    write_result(args.output, "bench_state", args, t_start, summary=summary, raw=raw, store_us_per_set=store_us,
                 routed_us=routed_us, target_met=met)
    return 0


if __name__ == "__main__":
    sys.exit(main())
