"""A stand-in for the embedded store in in-process tests: the same interface (see
iii_supervisor/store/base.py), ops run at once on an in-memory SQLite connection on the trio
thread. Writes are applied in submission order and their callers woken after a checkpoint, like
the real store's group commit; ``fail_next`` makes the next write fail as a full disk would."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from iii_supervisor.errors import EngineError

T = TypeVar("T")


class MemoryStore:
    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        self.versions: dict[str, int] = {}
        self.writes = 0
        self.fail_next = 0

    async def write(self, op: Callable[[Any], T]) -> T:
        if self.fail_next:
            self.fail_next -= 1
            await trio.lowlevel.checkpoint()
            raise EngineError("database or disk is full", code="store_full")
        self.writes += 1
        self.conn.execute("SAVEPOINT op")
        try:
            result = op(self.conn)
        except BaseException:
            self.conn.execute("ROLLBACK TO op")
            self.conn.execute("RELEASE op")
            raise
        self.conn.execute("RELEASE op")
        await trio.lowlevel.checkpoint()
        return result

    def write_nowait(self, op: Callable[[Any], object]) -> None:
        op(self.conn)

    async def read(self, op: Callable[[Any], T]) -> T:
        await trio.lowlevel.checkpoint()
        return op(self.conn)

    async def migrate(self, namespace: str, steps: Sequence[Any]) -> int:
        found = self.versions.get(namespace, 0)
        for step in steps[found:]:
            if isinstance(step, str):
                self.conn.execute(step)
            else:
                step(self.conn)
        self.versions[namespace] = len(steps)
        return found
