"""The embedded store: one SQLite database (WAL) in the data directory, written by one thread.

- **One writer thread** owns the write connection. Callers submit an op (a function of the
  connection) and park; the writer takes everything queued (up to ``max_group`` ops), runs it in
  one transaction, commits, and wakes every caller of the group with one ``run_sync_soon`` on
  the trio loop. A caller is woken only after the commit: that is the durability point.
- One failing op does not fail its group: when an op raises, the transaction is rolled back and
  the other ops run again in a fresh one, each inside its own SAVEPOINT (so a second failure is
  rolled back alone). The same happens when SQLite aborts the whole transaction itself (disk
  full, I/O error). This is why an op must not have effects outside the connection. A failed
  COMMIT fails every op of its group.
- **One reader thread** owns a second connection (``query_only``) for reads that need not
  queue behind writes; WAL lets it read while the writer writes.
- Nothing here runs SQLite on the trio thread.

``synchronous="full"`` (default) fsyncs the WAL at every commit: an acknowledged write survives
a process crash, a kernel crash and a power loss. ``"normal"`` fsyncs only at checkpoints: an
acknowledged write survives a crash of the process (``kill -9``), but the last commits may be
lost on power loss or a kernel crash (the database stays consistent).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import outcome
import trio

from ..errors import DataDirError, StoreClosed, StoreCorrupt, StoreError, StoreFull
from .base import MigrationStep
from .datadir import DataDirLock, prepare_data_dir

log = logging.getLogger(__name__)

T = TypeVar("T")

DB_FILE = "iii.db"
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26

Synchronous = Literal["full", "normal"]


@attrs.define
class StoreStats:
    """Counters for tests and benchmarks (written by the store's threads)."""

    groups: int = 0  # groups of writes taken by the writer (one commit each)
    transactions: int = 0  # write transactions begun (a group whose op failed takes two)
    writes: int = 0  # write ops run
    reads: int = 0
    largest_group: int = 0


class _Job:
    __slots__ = ("error", "nowait", "op", "result", "task")

    def __init__(self, op: Callable[[sqlite3.Connection], Any], task: trio.lowlevel.Task | None,
                 nowait: bool = False) -> None:
        self.op = op
        self.task = task
        self.result: Any = None
        self.error: BaseException | None = None
        self.nowait = nowait


_STOP = object()


def _split_sql(script: str) -> list[str]:
    """Split a script into statements (``executescript`` would commit the open transaction)."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \t\r\n;"):
        raise StoreError(f"migration step ends with an incomplete statement: {current.strip()[:200]!r}")
    return statements


class SqliteStore:
    """The SQLite implementation of :class:`iii_supervisor.store.Store`."""

    def __init__(self, data_dir: Path, *, synchronous: Synchronous = "full", max_group: int = 1024,
                 check_integrity: bool = True) -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self.data_dir = Path(data_dir).absolute()
        self.path = self.data_dir / DB_FILE
        self.synchronous = synchronous
        self.max_group = max_group
        self.check_integrity = check_integrity
        self.stats = StoreStats()
        self._lock = DataDirLock(self.data_dir)
        self._wq: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._rq: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._accepting = False
        self._started = False

    # --- the interface ---------------------------------------------------------------------

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if not self._accepting:
            raise StoreClosed(f"the store at {str(self.path)!r} is not running")
        job = _Job(op, trio.lowlevel.current_task())
        self._wq.put(job)
        return await trio.lowlevel.wait_task_rescheduled(lambda _: self._abandon(job))  # type: ignore[no-any-return]

    def write_nowait(self, op: Callable[[sqlite3.Connection], object]) -> None:
        if not self._accepting:
            raise StoreClosed(f"the store at {str(self.path)!r} is not running")
        self._wq.put(_Job(op, None, nowait=True))

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if not self._accepting:
            raise StoreClosed(f"the store at {str(self.path)!r} is not running")
        job = _Job(op, trio.lowlevel.current_task())
        self._rq.put(job)
        return await trio.lowlevel.wait_task_rescheduled(lambda _: self._abandon(job))  # type: ignore[no-any-return]

    async def migrate(self, namespace: str, steps: Sequence[MigrationStep]) -> int:
        steps = list(steps)
        path = str(self.path)

        def migrate(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT version FROM schema_versions WHERE namespace = ?", (namespace,)).fetchone()
            found = row[0] if row else 0
            if found > len(steps):
                raise StoreCorrupt(f"database {path!r} has schema version {found} for {namespace!r}; this "
                                   f"iii-supervisor knows versions up to {len(steps)} (it is older than the data)")
            for step in steps[found:]:
                if isinstance(step, str):
                    for statement in _split_sql(step):
                        conn.execute(statement)
                else:
                    step(conn)
            if found < len(steps):
                conn.execute("INSERT INTO schema_versions (namespace, version) VALUES (?, ?) "
                             "ON CONFLICT (namespace) DO UPDATE SET version = excluded.version",
                             (namespace, len(steps)))
            return found  # type: ignore[no-any-return]

        return await self.write(migrate)

    async def run(self, *, task_status: trio.TaskStatus[SqliteStore] = trio.TASK_STATUS_IGNORED) -> None:
        if self._started:
            raise RuntimeError("a SqliteStore runs once")
        self._started = True
        self._token = trio.lowlevel.current_trio_token()
        wconn, rconn = await trio.to_thread.run_sync(self._open)
        finished = trio.Event()
        running = [2]

        def thread_exited() -> None:
            running[0] -= 1
            if running[0] == 0:
                finished.set()

        threads = [threading.Thread(target=self._thread_main, args=(self._writer, self._wq, wconn, thread_exited),
                                    name="iii-store-writer", daemon=True),
                   threading.Thread(target=self._thread_main, args=(self._reader, self._rq, rconn, thread_exited),
                                    name="iii-store-reader", daemon=True)]
        self._accepting = True
        for thread in threads:
            thread.start()
        log.info("store: %s (synchronous=%s)", self.path, self.synchronous)
        try:
            task_status.started(self)
            await trio.sleep_forever()
        finally:
            # Everything already submitted is still committed: the threads drain their queues up
            # to the stop marker, and nothing can be submitted after it (same thread as write()).
            self._accepting = False
            self._wq.put(_STOP)
            self._rq.put(_STOP)
            with trio.CancelScope(shield=True), trio.move_on_after(60) as waited:
                await finished.wait()
            st = self.stats
            log.info("store: closed after %d write(s) in %d transaction(s) (largest group %d), %d read(s)",
                     st.writes, st.transactions, st.largest_group, st.reads)
            if waited.cancelled_caught:
                log.error("store: its threads did not finish within 60 s; leaving them "
                          "(the lock goes with the process)")
            else:
                self._lock.release()

    # --- opening ---------------------------------------------------------------------------

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        prepare_data_dir(self.data_dir)
        self._lock.acquire()
        conns: list[sqlite3.Connection] = []
        try:
            wconn = self._connect()
            conns.append(wconn)
            self._check(wconn)
            wconn.execute("CREATE TABLE IF NOT EXISTS schema_versions "
                          "(namespace TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            rconn = self._connect()
            conns.append(rconn)
            rconn.execute("PRAGMA query_only = ON")
            return wconn, rconn
        except sqlite3.Error as exc:
            for conn in conns:
                conn.close()
            self._lock.release()
            raise self._startup_error(exc) from None
        except BaseException:
            for conn in conns:
                conn.close()
            self._lock.release()
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are ours (BEGIN/COMMIT below), not the module's guess
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, cached_statements=512)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise DataDirError(f"database {str(self.path)!r} cannot use WAL mode (journal mode {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    def _check(self, conn: sqlite3.Connection) -> None:
        if not self.check_integrity:
            return
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            raise StoreCorrupt(f"database {str(self.path)!r} fails its integrity check ({'; '.join(problems)}); "
                               f"move it aside to start with an empty store, or restore a backup")

    def _startup_error(self, exc: sqlite3.Error) -> DataDirError:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            return StoreCorrupt(f"database {str(self.path)!r} is corrupt ({exc}); move it aside to start with "
                                f"an empty store, or restore a backup")
        return DataDirError(f"cannot open database {str(self.path)!r}: {exc}")

    # --- the threads -----------------------------------------------------------------------

    def _thread_main(self, serve: Callable[[sqlite3.Connection, list[_Job]], None], jobs: queue.SimpleQueue[Any],
                     conn: sqlite3.Connection, exited: Callable[[], None]) -> None:
        stopping = False
        try:
            while True:
                if stopping:
                    try:
                        first = jobs.get_nowait()
                    except queue.Empty:
                        break
                else:
                    first = jobs.get()
                batch: list[_Job] = []
                if first is _STOP:
                    stopping = True
                else:
                    batch.append(first)
                while len(batch) < self.max_group:
                    try:
                        job = jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is _STOP:
                        stopping = True
                    else:
                        batch.append(job)
                if batch:
                    serve(conn, batch)
                    self._deliver(batch)
        finally:
            if serve == self._writer:
                try:  # a clean stop leaves everything in the main file and an empty WAL
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:
                    log.warning("store: final checkpoint of %s failed: %s", self.path, exc)
            conn.close()
            self._deliver(exited)

    def _deliver(self, what: list[_Job] | Callable[[], None]) -> None:
        assert self._token is not None
        try:
            if isinstance(what, list):
                self._token.run_sync_soon(self._wake, what)
            else:
                self._token.run_sync_soon(what)
        except trio.RunFinishedError:
            pass

    def _writer(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        todo = batch
        stats = self.stats
        stats.groups += 1
        stats.largest_group = max(stats.largest_group, len(batch))
        # First pass without savepoints (two statements fewer per op); if an op raises, the
        # whole transaction is undone and the others run again, each in its own savepoint.
        careful = False
        try:
            while True:
                conn.execute("BEGIN IMMEDIATE")
                stats.transactions += 1
                again = False
                for job in todo:
                    stats.writes += 1
                    if careful:
                        conn.execute("SAVEPOINT op")
                    try:
                        job.result = job.op(conn)
                    except Exception as exc:  # noqa: BLE001 - an op may raise anything: it goes to its caller
                        job.error = self._map_error(exc)
                        if careful and conn.in_transaction:
                            conn.execute("ROLLBACK TO op")
                            conn.execute("RELEASE op")
                            continue
                        # the first pass, or SQLite itself aborted the transaction (disk full)
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        again = True
                        break
                    if careful:
                        conn.execute("RELEASE op")
                if again:
                    todo = [job for job in todo if job.error is None]
                    careful = True
                    if not todo:
                        return
                    continue
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    error = self._map_error(exc)
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    for job in todo:
                        if job.error is None:
                            job.error = error
                return
        except Exception as exc:  # noqa: BLE001 - BEGIN/SAVEPOINT/ROLLBACK failing: nothing of this group is known committed
            error = self._map_error(exc)
            log.error("store: write transaction failed: %s", error)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for job in todo:
                if job.error is None:
                    job.error = error

    def _reader(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        self.stats.reads += len(batch)
        for job in batch:
            try:
                conn.execute("BEGIN")  # one snapshot for the whole op
                job.result = job.op(conn)
            except Exception as exc:  # noqa: BLE001 - an op may raise anything: it goes to its caller
                job.error = self._map_error(exc)
            finally:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def _map_error(self, exc: Exception) -> BaseException:
        if not isinstance(exc, sqlite3.Error):
            return exc  # the op's own error, as it raised it
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL:
            mapped: StoreError = StoreFull(f"database {str(self.path)!r} is full (disk full or size limit): "
                                           f"the write was not made; earlier data is intact")
        else:
            mapped = StoreError(f"database {str(self.path)!r}: {exc}")
        mapped.__cause__ = exc
        return mapped

    # --- on the trio thread ----------------------------------------------------------------

    def _wake(self, batch: list[_Job]) -> None:
        for job in batch:
            task = job.task
            if task is None:
                if job.error is not None:
                    level = logging.WARNING if job.nowait else logging.DEBUG
                    log.log(level, "store: a write nobody waits for failed: %s", job.error)
                continue
            job.task = None
            if job.error is None:
                trio.lowlevel.reschedule(task, outcome.Value(job.result))
            else:
                trio.lowlevel.reschedule(task, outcome.Error(job.error))

    @staticmethod
    def _abandon(job: _Job) -> trio.lowlevel.Abort:
        # The waiter is cancelled; the op still runs (it may already have): only the wait ends.
        job.task = None
        return trio.lowlevel.Abort.SUCCEEDED
