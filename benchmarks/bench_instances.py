#!/usr/bin/env python3
"""Instances benchmark: routed calls to a CPU-bound worker run as 1 instance vs 2 instances.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_instances.py [--reps 3] [--seconds 3]

A driver worker keeps 64 calls in flight (``iii.trigger_async`` from 64 trio tasks, the same
loop as ``bench_invoke.py``'s driver) to ``bench.burn``, an async handler that burns ~200 µs of
CPU per call, served by a worker with ``instances = 1`` and then ``instances = 2``
(``[workers.burn]``). Repetitions are interleaved (1, 2, 1, 2 …); each starts a fresh
supervisor. Prints calls/s per setting (median [min–max]) and the ratio 2 / 1.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iii_supervisor.control import ControlClient

HERE = Path(__file__).parent

BURN = '''
import time
from iii_supervisor import register_worker

iii = register_worker()


async def burn(data):
    end = time.perf_counter() + 0.0002  # ~200 us of CPU, on the worker's loop
    while time.perf_counter() < end:
        pass
    return data


iii.register_function("bench.burn", burn)
'''


def run_once(workdir: Path, instances: int, seconds: float, concurrency: int) -> float:
    config = workdir / f"config{instances}.toml"
    config.write_text(f"[workers.burn]\ninstances = {instances}\n")
    runtime = Path(tempfile.mkdtemp(prefix="iii-bi"))
    proc = subprocess.Popen([sys.executable, "-m", "iii_supervisor", "start", str(workdir / "workers"),
                             "--config", str(config), "--runtime-dir", str(runtime), "--http-port", "0",
                             "--data-dir", str(runtime / "data")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with ControlClient(runtime / "control.sock", timeout=5) as client:
                    workers = client.call("engine::workers::list")["workers"]
                if sum(w["state"] == "running" for w in workers) == instances + 1:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("supervisor did not start")
            time.sleep(0.1)
        params = {"mode": "inflight", "target": "bench.burn", "count": 10**7, "concurrency": concurrency}
        with ControlClient(runtime / "control.sock", timeout=seconds + 60) as client:
            client.call("bench.run", {**params, "seconds": 0.5})  # warm-up
            stats = client.call("bench.run", {**params, "seconds": seconds})
        return float(stats["calls_per_s"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(runtime, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="iii-bench-inst") as tmp:
        workdir = Path(tmp)
        (workdir / "workers").mkdir()
        shutil.copy(HERE / "workers_invoke" / "driver.py", workdir / "workers" / "driver.py")
        shutil.copy(HERE / "_common.py", workdir / "_common.py")  # the driver's helpers (its parent dir)
        (workdir / "workers" / "burn.py").write_text(BURN)
        results: dict[int, list[float]] = {1: [], 2: []}
        for rep in range(args.reps):
            for n in (1, 2):
                rate = run_once(workdir, n, args.seconds, args.concurrency)
                results[n].append(rate)
                print(f"rep {rep + 1}: instances={n}: {rate:,.0f} calls/s", flush=True)
    med = {n: statistics.median(v) for n, v in results.items()}
    print()
    print("| instances | calls/s (64 in flight, ~200 us CPU per call) | [min-max] |")
    print("|---|---|---|")
    for n in (1, 2):
        print(f"| {n} | {med[n]:,.0f} | [{min(results[n]):,.0f}-{max(results[n]):,.0f}] |")
    print(f"\nratio 2 instances / 1 instance: {med[2] / med[1]:.2f}x")


if __name__ == "__main__":
    main()
