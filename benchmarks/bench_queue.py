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
  process -w 2`` (process workers, the mode the issue's target names) and ``-k thread -w 2``,
  each on its own database, with the same trivial task; the producer enqueues N tasks from this
  process, sequentially (and, for process mode, from 8 threads: more hit huey's SQLite lock
  timeout); end to end = until the N results are stored.

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


def start_huey(tmp: Path, mode: str) -> tuple[subprocess.Popen[bytes], Any]:
    """A ``huey_consumer -k MODE -w 2`` on its own database, and a producer-side huey for it."""
    db = tmp / f"huey-{mode}.db"
    env = {**os.environ, "HUEY_DB": str(db), "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen([str(BIN / "huey_consumer"), "huey_app.huey", "-k", mode, "-w", "2", "-q"],
                            cwd=HERE, env=env, stdout=open(tmp / f"huey-{mode}.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    import huey as huey_lib
    import huey_app

    producer = huey_lib.SqliteHuey(filename=str(db))
    task = producer.task()(huey_app.trivial.func)  # the same function: the same task name as the consumer's

    class App:
        huey = producer
        trivial = task

    time.sleep(1.0)
    return proc, App

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
    deadline = time.monotonic() + 120
    while app.huey.result_count() < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"huey did not finish: {app.huey.result_count()} of {n} results, "
                               f"{app.huey.pending_count()} pending")
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
    keys = ("ours64", "ours1", "huey1", "huey_thread1", "huey8")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sup, client = start_supervisor(tmp, args.synchronous)
        procs.append(sup)
        huey_p, app_p = start_huey(tmp, "process")
        huey_t, app_t = start_huey(tmp, "thread")
        procs += [huey_p, huey_t]
        ours(client, 1000, 64)  # warm-up
        huey_run(app_p, 200, 1)
        huey_run(app_t, 200, 1)
        for _ in range(reps):
            results["ours64"].append(ours(client, n_fast, 64))
            results["huey1"].append(huey_run(app_p, n_huey, 1))
            results["ours1"].append(ours(client, n_seq, 1))
            results["huey_thread1"].append(huey_run(app_t, n_huey, 1))
            try:  # several producer threads on one SQLite file can hit huey's 5 s lock timeout
                results["huey8"].append(huey_run(app_p, n_huey, 8))
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                print(f"huey with 8 producer threads failed: {exc}", file=sys.stderr)
        client.close()
    except BaseException:
        for log in sorted(tmp.glob("*.log")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]),
                  file=sys.stderr)
        raise
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str, i: int) -> float:
        return statistics.median(r[i] for r in results[key]) if results[key] else float("nan")

    huey_best = max(v for v in (med("huey1", 1), med("huey_thread1", 1), med("huey8", 1)) if v == v)
    rows = [("iii-supervisor, 64 in flight", "ours64"), ("iii-supervisor, 1 sequential producer", "ours1"),
            ("huey SqliteHuey process -w 2, 1 producer", "huey1"),
            ("huey SqliteHuey thread -w 2, 1 producer", "huey_thread1"),
            ("huey SqliteHuey process -w 2, 8 threads", "huey8")]
    print(f"\nstore synchronous={args.synchronous}; {reps} interleaved rep(s); medians; messages/s")
    print(f"{'what':<42} {'enqueue-only':>13} {'end to end':>11} {'vs best huey e2e':>17}")
    for label, key in rows:
        print(f"{label:<42} {med(key, 0):>13,.0f} {med(key, 1):>11,.0f} {med(key, 1) / huey_best:>16.2f}x")
    r64 = med("ours64", 1) / med("huey1", 1)
    r1 = med("ours1", 1) / max(med("huey1", 1), med("huey_thread1", 1))
    print(f"\ntarget 1: end to end, 64 in flight >= 10x huey (defaults, 1 producer): {r64:.1f}x "
          f"{'MET' if r64 >= 10 else 'MISSED'}")
    print(f"target 2: end to end, 1 sequential producer >= 1.5x huey (faster mode, 1 producer): {r1:.1f}x "
          f"{'MET' if r1 >= 1.5 else 'MISSED'}")
    print(f"(best huey end to end in this run: {huey_best:,.0f}/s; 64 in flight vs it: "
          f"{med('ours64', 1) / huey_best:.1f}x)")


if __name__ == "__main__":
    main()
