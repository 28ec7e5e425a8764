"""What a module may ask of the store: the seam a networked adapter would fill.

A module holds a :class:`Store` and nothing more specific. Its data operations are plain
functions of the backend's connection (``op(conn) -> result``), kept together in one storage
file per module (for example ``modules/queue/storage.py``), so that moving a module to another
backend means writing that one file again and an adapter of this protocol; the module's logic
does not change. See docs/store.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import trio

T = TypeVar("T")

#: A unit of work: gets the backend's connection (``sqlite3.Connection`` for :class:`SqliteStore`),
#: returns a result. It must have no effect outside the connection: the store may run it again
#: after a rollback of its group (see ``SqliteStore``).
Op = Callable[[Any], T]

#: One schema step: SQL text (one or more statements) or a function of the connection.
MigrationStep = str | Callable[[Any], None]


class Store(Protocol):
    """Durable, ordered writes with group commit; reads off the writer; per-namespace schemas.

    - ``await write(op)`` returns ``op``'s result once the transaction that ran it has committed
      (durably, per the store's ``synchronous`` setting), or raises ``op``'s own exception (the
      op's effects are undone, its neighbours in the group are not affected). Writes commit in
      the order they were submitted. Cancelling the waiter does not withdraw the write.
    - ``write_nowait(op)`` submits without waiting (acknowledgements that may be lost in a crash
      without harm); a failure is logged. It is ordered with the other writes.
    - ``await read(op)`` runs ``op`` on a read connection in one snapshot; it sees every write
      whose ``write`` has returned.
    - ``await migrate(namespace, steps)`` brings ``namespace``'s schema to ``len(steps)``, running
      the missing steps in one transaction; returns the version it found.
    - ``await run(task_status=...)`` opens the store (lock, files, integrity), starts its threads
      and reports ready; on cancellation it commits what was accepted and closes.
    """

    async def write(self, op: Callable[[Any], T]) -> T: ...

    def write_nowait(self, op: Callable[[Any], object]) -> None: ...

    async def read(self, op: Callable[[Any], T]) -> T: ...

    async def migrate(self, namespace: str, steps: Sequence[MigrationStep]) -> int: ...

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None: ...
