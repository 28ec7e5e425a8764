"""The embedded store, on real SQLite files in temporary directories."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from iii_supervisor.errors import (
    ConfigError,
    DataDirError,
    DataDirLocked,
    StoreClosed,
    StoreCorrupt,
    StoreFull,
)
from iii_supervisor.store import (
    DB_FILE,
    SqliteStore,
    default_data_dir,
    resolve_data_dir,
)

SCHEMA = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"]


@asynccontextmanager
async def running(path: Path, **kwargs: object) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(path, **kwargs)  # type: ignore[arg-type]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.migrate("test", SCHEMA)
            yield store
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the nursery wraps; tests want the error itself
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def insert(v: str):
    return lambda conn: conn.execute("INSERT INTO t (v) VALUES (?)", (v,)).lastrowid


def values(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT v FROM t ORDER BY id")]


def hold_writer(seconds: float):
    """An op that keeps the writer busy, so that what is submitted meanwhile forms one group."""
    def op(_conn: sqlite3.Connection) -> None:
        time.sleep(seconds)
    return op


async def test_concurrent_writes_are_group_committed(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running(tmp_path) as store:
            before = store.stats.groups
            ids: list[int] = []

            async def writer(i: int) -> None:
                ids.append(await store.write(insert(f"v{i}")))

            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(writer, i)
            transactions = store.stats.groups - before
            assert sorted(await store.read(values)) == sorted(f"v{i}" for i in range(300))
            assert len(set(ids)) == 300
            assert transactions < 300 / 4, transactions
            assert store.stats.largest_group > 1


async def test_one_failing_op_does_not_fail_its_group(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running(tmp_path) as store:
            results: dict[str, object] = {}

            def insert_then_raise(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO t (v) VALUES ('undone')")
                raise KeyError("boom")

            async def call(name: str, op) -> None:
                try:
                    results[name] = await store.write(op)
                except Exception as exc:  # noqa: BLE001 - the test records whatever it is
                    results[name] = exc

            await store.write(insert("pre"))
            store.write_nowait(hold_writer(0.3))
            await trio.sleep(0.05)  # the writer is now inside hold_writer
            before = store.stats.groups
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "a", insert("a"))
                nursery.start_soon(call, "raises", insert_then_raise)
                nursery.start_soon(call, "dup", insert("pre"))  # UNIQUE violation
                nursery.start_soon(call, "b", insert("b"))
            assert store.stats.groups - before == 1  # all four in one group
            assert isinstance(results["a"], int) and isinstance(results["b"], int)
            assert isinstance(results["raises"], KeyError)
            dup = results["dup"]
            assert getattr(dup, "code", None) == "store_error" and "UNIQUE" in str(dup)
            assert sorted(await store.read(values)) == ["a", "b", "pre"]


async def test_disk_full_fails_that_write_and_keeps_earlier_data(tmp_path: Path) -> None:
    big = "x" * 20_000
    with trio.fail_after(20):
        async with running(tmp_path) as store:
            for i in range(5):
                await store.write(insert(f"{i}-{big}"))
            pages = await store.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
            await store.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}"))
            with pytest.raises(StoreFull) as info:
                for i in range(5, 50):
                    await store.write(insert(f"{i}-{big}"))
            assert str(tmp_path / DB_FILE) in info.value.message
            # a small write in the same group as a failing big one still commits
            store.write_nowait(hold_writer(0.2))
            await trio.sleep(0.05)
            outcome: dict[str, object] = {}

            async def call(name: str, v: str) -> None:
                try:
                    outcome[name] = await store.write(insert(v))
                except StoreFull as exc:
                    outcome[name] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "small", "small")
                nursery.start_soon(call, "big", "big-" + big * 3)
                nursery.start_soon(call, "small2", "small2")
            assert isinstance(outcome["big"], StoreFull)
            assert isinstance(outcome["small"], int) and isinstance(outcome["small2"], int)
            kept = await store.read(values)
    assert len(kept) >= 5 + 2
    async with running(tmp_path) as store:  # reopened: everything acknowledged is there
        assert await store.read(values) == kept


DURABLE_WRITER = textwrap.dedent("""
    import sys, trio
    from pathlib import Path
    from iii_supervisor.store import SqliteStore

    async def main():
        store = SqliteStore(Path(sys.argv[1]))
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await store.migrate("test", ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"])
            async def writer(k):
                for i in range(100000):
                    v = f"{k}-{i}"
                    await store.write(lambda c: c.execute("INSERT INTO t (v) VALUES (?)", (v,)))
                    sys.stdout.write(v + "\\n")
                    sys.stdout.flush()
            for k in range(32):
                nursery.start_soon(writer, k)
    trio.run(main)
""")


async def test_every_acknowledged_write_survives_kill_9(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(DURABLE_WRITER)
    data = tmp_path / "data"
    acked: list[str] = []
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process([sys.executable, str(script), str(data)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            buf = b""
            while len(acked) < 3000:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, "writer exited early"
                buf += chunk
                *lines, buf = buf.split(b"\n")
                acked += [line.decode() for line in lines]
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        async with running(data) as store:
            present = set(await store.read(values))
    missing = [v for v in acked if v not in present]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


async def test_second_store_on_the_same_dir_is_refused_naming_the_pid(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(tmp_path):
            with pytest.raises(DataDirLocked) as info:
                async with running(tmp_path):
                    pass
    assert isinstance(info.value, ConfigError)  # the CLI exits 78
    assert f"pid {os.getpid()}" in info.value.message and str(tmp_path) in info.value.message


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_bytes(b"this is not SQLite " * 500)
    with trio.fail_after(10), pytest.raises(StoreCorrupt) as info:
        async with running(tmp_path):
            pass
    assert str(tmp_path / DB_FILE) in info.value.message
    # the lock was released: a fixed directory can be opened at once
    (tmp_path / DB_FILE).unlink()
    async with running(tmp_path):
        pass


async def test_a_damaged_database_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as store:
        for i in range(2000):
            store.write_nowait(insert(f"value-{i:05d}-" + "y" * 100))
        await store.write(lambda c: None)
    db = tmp_path / DB_FILE
    with open(db, "r+b") as f:  # noqa: ASYNC230 - scribble over pages in the middle, keep the header
        f.seek(4096 * 3)
        f.write(os.urandom(4096 * 4))
    with trio.fail_after(10), pytest.raises(StoreCorrupt) as info:
        async with running(tmp_path):
            pass
    assert str(db) in info.value.message


async def test_an_unusable_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with trio.fail_after(10), pytest.raises(DataDirError) as info:
        async with running(tmp_path / "afile" / "data"):
            pass
    assert "afile" in info.value.message and isinstance(info.value, ConfigError)


async def test_migrations_are_versioned_per_namespace(tmp_path: Path) -> None:
    v1 = "CREATE TABLE q (id INTEGER PRIMARY KEY);\nCREATE INDEX q_id ON q (id);"
    v2 = "ALTER TABLE q ADD COLUMN note TEXT DEFAULT 'n'"
    with trio.fail_after(10):
        async with running(tmp_path) as store:
            assert await store.migrate("queue", [v1]) == 0
            assert await store.migrate("queue", [v1]) == 1  # nothing to do
            await store.write(lambda c: c.execute("INSERT INTO q (id) VALUES (1)"))
        async with running(tmp_path) as store:
            calls: list[int] = []

            def v3(conn: sqlite3.Connection) -> None:
                calls.append(1)
                conn.execute("UPDATE q SET note = 'migrated'")

            assert await store.migrate("queue", [v1, v2, v3]) == 1
            assert await store.read(lambda c: c.execute("SELECT id, note FROM q").fetchall()) == [(1, "migrated")]
            assert await store.migrate("other", ["CREATE TABLE o (x)"]) == 0
            versions = await store.read(lambda c: dict(c.execute("SELECT namespace, version FROM schema_versions")))
            assert versions == {"test": 1, "queue": 3, "other": 1}
            with pytest.raises(StoreCorrupt, match="version 3 for 'queue'"):
                await store.migrate("queue", [v1])  # an older supervisor on newer data
            # a failing step leaves the namespace at its version
            with pytest.raises(Exception, match="no such table"):
                await store.migrate("other", ["CREATE TABLE o (x)", "INSERT INTO missing VALUES (1)"])
            assert await store.migrate("other", ["CREATE TABLE o (x)"]) == 1
            assert calls == [1]


async def test_accepted_writes_are_committed_at_shutdown_and_then_refused(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(tmp_path) as store:
            for i in range(500):
                store.write_nowait(insert(f"n{i}"))
        with pytest.raises(StoreClosed):
            await store.write(insert("late"))
        async with running(tmp_path) as store:
            assert len(await store.read(values)) == 500


async def test_a_cancelled_waiter_does_not_withdraw_its_write(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(tmp_path) as store:
            store.write_nowait(hold_writer(0.2))
            with trio.move_on_after(0.05) as scope:
                await store.write(insert("kept"))
            assert scope.cancelled_caught
            await store.write(lambda c: None)  # writes are ordered: "kept" is committed now
            assert await store.read(values) == ["kept"]


async def test_reads_see_acknowledged_writes_and_raise_their_errors(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(tmp_path) as store:
            await store.write(insert("a"))
            assert await store.read(values) == ["a"]
            with pytest.raises(Exception, match="readonly|query_only|attempt to write"):
                await store.read(lambda c: c.execute("INSERT INTO t (v) VALUES ('r')"))
            with pytest.raises(ZeroDivisionError):
                await store.read(lambda c: 1 / 0)


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert default_data_dir() == tmp_path / "a"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "iii-supervisor"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "state" / "iii-supervisor"
    assert resolve_data_dir("/x", "/y") == Path("/x")
    assert resolve_data_dir(None, "/y") == Path("/y")
    assert resolve_data_dir(None, None) == default_data_dir()


async def test_data_dir_is_created_private(tmp_path: Path) -> None:
    async with running(tmp_path / "new" / "data"):
        pass
    assert (tmp_path / "new" / "data").stat().st_mode & 0o777 == 0o700
