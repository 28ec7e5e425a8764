"""Per-op cost of the store: ``await store.write(op)`` against plain sqlite3 on one thread.

    .venv/bin/python benchmarks/bench_store.py [--ops 20000] [--reps 3]

Each op inserts one small row. "store" rows go through SqliteStore (writer thread, group commit,
a SAVEPOINT per op, the caller woken on the trio loop); "sqlite3" rows are the same inserts done
directly on one connection, one transaction per row and 64 rows per transaction: the floor that
group commit works against. Repetitions are interleaved; the table shows medians.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import trio

from iii_supervisor.store import SqliteStore

INSERT = "INSERT INTO t (v) VALUES ('payload-of-a-small-message')"


async def store_run(sync: str, concurrency: int, ops: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp), synchronous=sync)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.migrate("bench", ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])
            per_task = ops // concurrency

            def op(conn: sqlite3.Connection) -> None:
                conn.execute(INSERT)

            async def writer() -> None:
                for _ in range(per_task):
                    await store.write(op)

            tx0 = store.stats.transactions
            t0 = time.perf_counter()
            async with trio.open_nursery() as inner:
                for _ in range(concurrency):
                    inner.start_soon(writer)
            elapsed = time.perf_counter() - t0
            groups = per_task * concurrency / max(1, store.stats.transactions - tx0)
            nursery.cancel_scope.cancel()
    return per_task * concurrency / elapsed, groups


def sqlite_run(sync: str, per_tx: int, ops: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "b.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {sync.upper()}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        t0 = time.perf_counter()
        for _ in range(ops // per_tx):
            conn.execute("BEGIN")
            for _ in range(per_tx):
                conn.execute(INSERT)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        conn.close()
    return ops // per_tx * per_tx / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cases: list[tuple[str, str, int]] = [(kind, sync, n) for sync in ("full", "normal")
                                         for kind, n in (("store", 1), ("store", 64), ("sqlite3", 1), ("sqlite3", 64))]
    results: dict[tuple[str, str, int], list[float]] = {c: [] for c in cases}
    group_sizes: dict[tuple[str, str, int], list[float]] = {c: [] for c in cases}
    for _ in range(args.reps):  # interleaved repetitions
        for case in cases:
            kind, sync, n = case
            ops = args.ops if n > 1 else max(500, args.ops // 10)
            if kind == "store":
                rate, group = trio.run(store_run, sync, n, ops)
                group_sizes[case].append(group)
            else:
                rate = sqlite_run(sync, n, ops)
            results[case].append(rate)
    print(f"{'what':<34} {'sync':<7} {'ops/s':>9} {'us/op':>7} {'ops/txn':>8}")
    for case in cases:
        kind, sync, n = case
        rate = statistics.median(results[case])
        what = (f"store.write, {n} concurrent" if kind == "store" else f"sqlite3 direct, {n} per txn")
        group = f"{statistics.median(group_sizes[case]):.1f}" if group_sizes[case] else str(n)
        print(f"{what:<34} {sync:<7} {rate:>9,.0f} {1e6 / rate:>7.1f} {group:>8}")


if __name__ == "__main__":
    main()
