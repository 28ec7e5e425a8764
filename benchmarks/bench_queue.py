#!/usr/bin/env python3
"""Durable queue benchmark: iii-supervisor topics vs huey's SqliteHuey, on the same machine.

Run (from the repository root; huey comes from benchmarks/requirements.txt)::

    .venv/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/bench_queue.py            # ~1-2 minutes
    .venv/bin/python benchmarks/bench_queue.py --quick    # smoke run

What it measures
----------------
- **ours, end to end**: a real supervisor (``iii-supervisor start benchmarks/workers_queue``, store
  ``synchronous=full`` unless ``--synchronous normal``) with two workers. The producer worker
  publishes N messages to topic ``bench`` with ``iii.trigger_async({"function_id": "enqueue", ...})``
  from 64 concurrent tasks (and, separately, one sequential task); each publish returns once its
  message is committed. The consumer worker's async handler counts them (the supervisor acks each).
  Measured inside the producer: *enqueue-only* = time until every publish returned; *end to end*
  = time until the consumer has handled all N.
- **huey SqliteHuey** (its defaults: results stored, fsync per commit) with ``huey_consumer -k
  process -w 2`` (process workers, the mode the issue's target names) and the same trivial task;
  the producer enqueues N tasks from this process, sequentially and from 64 threads; end to end =
  until the N results are stored.

Repetitions are interleaved (rep 1 of everything, then rep 2 ...); the table shows medians and the
ratios against huey measured in the same run. Targets (issue 8): end to end with 64 in flight
>= 10x huey, and >= 1.5x huey with one sequential producer.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from iii_supervisor.control import ControlClient  # noqa: E402
from iii_supervisor.errors import EngineError  # noqa: E402


def start_supervisor(tmp: Path, synchronous: str) -> tuple[subprocess.Popen[bytes], ControlClient]:
    config = tmp / "bench.toml"
    config.write_text(f'[supervisor]\nstore_synchronous = "{synchronous}"\nlog_level = "warning"\n')
    runtime = tmp / "rt"
    proc = subprocess.Popen([str(BIN / "iii-supervisor"), "start", str(HERE / "workers_queue"), "--runtime-dir",
                             str(runtime), "--data-dir", str(tmp / "data"), "--http-port", "0",
                             "--config", str(config)],
                            stdout=open(tmp / "supervisor.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            client = ControlClient(runtime / "control.sock", timeout=600)
            ids = {f["function_id"] for f in client.call("engine::functions::list")["functions"]}
            topics = client.call("engine::queue::list_topics")["topics"]
            if {"bench.produce", "bench.wait"} <= ids and any(t["topic"] == "bench" for t in topics):
                return proc, client
            client.close()
        except (OSError, EngineError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("supervisor did not come up:\n" + (tmp / "supervisor.log").read_text())
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ours(client: ControlClient, n: int, inflight: int) -> tuple[float, float]:
    r = client.call("bench.produce", {"n": n, "inflight": inflight}, timeout_ms=600_000)
    return n / r["enqueue_s"], n / r["e2e_s"]


def start_huey(tmp: Path) -> tuple[subprocess.Popen[bytes], Any]:
    env = {**os.environ, "HUEY_DB": str(tmp / "huey.db"), "PYTHONPATH": str(HERE)}
    os.environ["HUEY_DB"] = env["HUEY_DB"]
    proc = subprocess.Popen([str(BIN / "huey_consumer"), "huey_app.huey", "-k", "process", "-w", "2", "-q"],
                            cwd=HERE, env=env, stdout=open(tmp / "huey.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    import huey_app  # noqa: PLC0415 - after HUEY_DB is set

    time.sleep(1.0)
    return proc, huey_app


def huey_run(app: Any, n: int, threads: int) -> tuple[float, float]:
    app.huey.flush()
    t0 = time.perf_counter()
    if threads == 1:
        for i in range(n):
            app.trivial(i)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(app.trivial, range(n), chunksize=16))
    enqueued = time.perf_counter()
    deadline = time.monotonic() + 600
    while app.huey.result_count() < n:
        if time.monotonic() > deadline:
            raise RuntimeError("huey did not finish")
        time.sleep(0.005)
    return n / (enqueued - t0), n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    n_fast, n_seq, n_huey = (4000, 500, 500) if args.quick else (30000, 3000, 3000)
    reps = 1 if args.quick else args.reps
    sys.path.insert(0, str(HERE))
    tmp = Path(tempfile.mkdtemp(prefix="iii-bq"))
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in ("ours64", "ours1", "huey1", "huey64")}
    sup = huey = None
    try:
        sup, client = start_supervisor(tmp, args.synchronous)
        huey, app = start_huey(tmp)
        ours(client, 1000, 64)  # warm-up
        huey_run(app, 200, 1)
        for _ in range(reps):
            results["ours64"].append(ours(client, n_fast, 64))
            results["huey1"].append(huey_run(app, n_huey, 1))
            results["ours1"].append(ours(client, n_seq, 1))
            results["huey64"].append(huey_run(app, n_huey, 64))
        client.close()
    finally:
        if sup is not None:
            stop(sup)
        if huey is not None:
            stop(huey)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str, i: int) -> float:
        return statistics.median(r[i] for r in results[key])

    huey_best = max(med("huey1", 1), med("huey64", 1))
    rows = [("iii-supervisor, 64 in flight", "ours64"), ("iii-supervisor, 1 sequential producer", "ours1"),
            ("huey SqliteHuey, 1 producer", "huey1"), ("huey SqliteHuey, 64 producer threads", "huey64")]
    print(f"\nstore synchronous={args.synchronous}; {reps} interleaved rep(s); medians; messages/s")
    print(f"{'what':<40} {'enqueue-only':>13} {'end to end':>11} {'vs best huey e2e':>17}")
    for label, key in rows:
        print(f"{label:<40} {med(key, 0):>13,.0f} {med(key, 1):>11,.0f} {med(key, 1) / huey_best:>16.2f}x")
    r64 = med("ours64", 1) / med("huey1", 1)
    r1 = med("ours1", 1) / med("huey1", 1)
    print(f"\ntarget 1: end to end, 64 in flight >= 10x huey (defaults, 1 producer): {r64:.1f}x "
          f"{'MET' if r64 >= 10 else 'MISSED'}")
    print(f"target 2: end to end, 1 sequential producer >= 1.5x huey: {r1:.1f}x {'MET' if r1 >= 1.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
