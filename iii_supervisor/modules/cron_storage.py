"""The cron module's tables in the store: when each persistent job's ticks were last accounted for.

All of cron's SQL is here (see docs/store.md: one storage file per module), behind
:class:`~.cron.LastRuns`. A row per job key (function id, expression, time zone); ``covered`` is
epoch seconds (UTC).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..store import Store

NAMESPACE = "cron"
MIGRATIONS = [
    "CREATE TABLE cron_last_runs (job_key TEXT PRIMARY KEY, covered REAL NOT NULL) WITHOUT ROWID",
]
#: keys per SELECT (SQLite's default limit on bound parameters is 32766; older builds 999)
_CHUNK = 500


def _select(keys: list[str]) -> Any:
    def op(conn: sqlite3.Connection) -> dict[str, float]:
        found: dict[str, float] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(conn.execute(f"SELECT job_key, covered FROM cron_last_runs WHERE job_key IN ({marks})",
                                      chunk).fetchall())
        return found
    return op


def _upsert(key: str, covered: float) -> Any:
    def op(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO cron_last_runs (job_key, covered) VALUES (?, ?) "
                     "ON CONFLICT (job_key) DO UPDATE SET covered = excluded.covered", (key, covered))
    return op


class StoreLastRuns:
    """:class:`~.cron.LastRuns` on the embedded store (``ModuleContext.store``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def prepare(self) -> None:
        await self.store.migrate(NAMESPACE, MIGRATIONS)

    async def get_many(self, keys: list[str]) -> dict[str, float]:
        if not keys:
            return {}
        result: dict[str, float] = await self.store.read(_select(keys))
        return result

    async def set(self, key: str, covered: float) -> None:
        await self.store.write(_upsert(key, covered))
