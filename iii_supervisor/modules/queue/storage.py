"""The queue's SQL: every statement the queue module runs, as ops for the store.

This file is the queue's half of the store seam (docs/store.md): a networked backend rewrites it,
the module does not change. Each function returns an op, ``op(conn) -> result``, for
``store.write`` / ``store.write_nowait`` / ``store.read``.

A row is one copy of a message in one lane: ``queue`` is the named queue or the topic,
``subscriber`` is '' for a named queue and the subscribed function for a topic. Delivery writes
nothing; success deletes the row; a failure updates ``attempts``/``due_ms``; a dead letter sets
``dead``. So after a crash every row not deleted is delivered again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

NAMESPACE = "queue"

MIGRATIONS = [
    """
    CREATE TABLE queue_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids order a fifo group and name dead letters
        receipt TEXT NOT NULL,
        queue TEXT NOT NULL,
        subscriber TEXT NOT NULL,
        function_id TEXT NOT NULL,
        data BLOB NOT NULL,
        grp TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        due_ms INTEGER NOT NULL DEFAULT 0,
        dead INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_ms INTEGER NOT NULL,
        dead_ms INTEGER
    );
    CREATE INDEX queue_messages_lane ON queue_messages (queue, subscriber, dead, id);
    CREATE TABLE queue_subscriptions (
        topic TEXT NOT NULL,
        function_id TEXT NOT NULL,
        settings TEXT NOT NULL,
        condition_function_id TEXT,
        seen_ms INTEGER NOT NULL,
        PRIMARY KEY (topic, function_id)
    );
    """,
]

Op = Callable[[sqlite3.Connection], Any]
LaneKey = tuple[str, str]  # (queue or topic, subscriber function or '')


@attrs.frozen
class NewRow:
    receipt: str
    queue: str
    subscriber: str
    function_id: str
    data: bytes
    group: str | None
    created_ms: int


@attrs.frozen
class StoredMessage:
    id: int
    function_id: str
    data: bytes
    group: str | None
    attempts: int
    due_ms: int


@attrs.frozen
class Subscription:
    topic: str
    function_id: str
    settings: str  # JSON of the subscriber's queue_config
    condition_function_id: str | None
    seen_ms: int


_INSERT = ("INSERT INTO queue_messages (receipt, queue, subscriber, function_id, data, grp, created_ms) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")


def insert(rows: Sequence[NewRow]) -> Callable[[sqlite3.Connection], list[int]]:
    """Insert ``rows`` (the copies of one publish); returns their ids in order."""
    def op(conn: sqlite3.Connection) -> list[int]:
        ids = []
        for r in rows:
            cur = conn.execute(_INSERT, (r.receipt, r.queue, r.subscriber, r.function_id, r.data, r.group,
                                         r.created_ms))
            ids.append(cur.lastrowid)
        return ids  # type: ignore[return-value]
    return op


def ack(ids: Iterable[int]) -> Op:
    params = [(i,) for i in ids]

    def op(conn: sqlite3.Connection) -> None:
        conn.executemany("DELETE FROM queue_messages WHERE id = ?", params)
    return op


def retry_later(updates: Iterable[tuple[int, int, int, str]]) -> Op:
    """``updates``: (id, attempts, due_ms, last_error)."""
    params = [(attempts, due, error, i) for i, attempts, due, error in updates]

    def op(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE queue_messages SET attempts = ?, due_ms = ?, last_error = ? WHERE id = ?", params)
    return op


def dead_letter(updates: Iterable[tuple[int, int, str]], now_ms: int) -> Op:
    """``updates``: (id, attempts, last_error)."""
    params = [(attempts, error, now_ms, i) for i, attempts, error in updates]

    def op(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE queue_messages SET dead = 1, attempts = ?, last_error = ?, dead_ms = ? "
                         "WHERE id = ?", params)
    return op


def load(lane: LaneKey, limit: int) -> Callable[[sqlite3.Connection], list[StoredMessage]]:
    """The first ``limit`` live (not dead) messages of ``lane`` in id order."""
    def op(conn: sqlite3.Connection) -> list[StoredMessage]:
        rows = conn.execute("SELECT id, function_id, data, grp, attempts, due_ms FROM queue_messages "
                            "WHERE queue = ? AND subscriber = ? AND dead = 0 ORDER BY id LIMIT ?",
                            (lane[0], lane[1], limit)).fetchall()
        return [StoredMessage(*row) for row in rows]
    return op


def live_lanes(conn: sqlite3.Connection) -> list[LaneKey]:
    """Every lane with a message that is not dead (at start: where to load from)."""
    return [(q, s) for q, s in conn.execute("SELECT DISTINCT queue, subscriber FROM queue_messages WHERE dead = 0")]


def lane_counts(now_ms: int) -> Callable[[sqlite3.Connection], dict[LaneKey, dict[str, int]]]:
    """Per lane: ``waiting`` (due), ``delayed`` (retry later), ``dead``."""
    def op(conn: sqlite3.Connection) -> dict[LaneKey, dict[str, int]]:
        out: dict[LaneKey, dict[str, int]] = {}
        for q, s, waiting, delayed, dead in conn.execute(
                "SELECT queue, subscriber, "
                "SUM(dead = 0 AND due_ms <= ?), SUM(dead = 0 AND due_ms > ?), SUM(dead = 1) "
                "FROM queue_messages GROUP BY queue, subscriber", (now_ms, now_ms)):
            out[(q, s)] = {"waiting": waiting or 0, "delayed": delayed or 0, "dead": dead or 0}
        return out
    return op


def dead_messages(queue: str, offset: int, limit: int) -> Callable[[sqlite3.Connection], list[dict[str, Any]]]:
    def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        rows = conn.execute("SELECT id, receipt, queue, subscriber, function_id, data, attempts, last_error, "
                            "created_ms, dead_ms FROM queue_messages WHERE queue = ? AND dead = 1 "
                            "ORDER BY id LIMIT ? OFFSET ?", (queue, limit, offset)).fetchall()
        keys = ("id", "receipt", "queue", "subscriber", "function_id", "data", "attempts", "last_error",
                "created_ms", "dead_ms")
        return [dict(zip(keys, row, strict=True)) for row in rows]
    return op


def redrive(queue: str, message_id: int | None) -> Callable[[sqlite3.Connection], list[LaneKey]]:
    """Dead messages of ``queue`` (or just ``message_id``) live again with no attempts; returns the
    lanes touched, once per message (so its length is the count)."""
    def op(conn: sqlite3.Connection) -> list[LaneKey]:
        where, args = "queue = ? AND dead = 1", [queue]
        if message_id is not None:
            where += " AND id = ?"
            args.append(message_id)  # type: ignore[arg-type]
        lanes = [(q, s) for q, s in conn.execute(f"SELECT queue, subscriber FROM queue_messages WHERE {where}", args)]
        conn.execute("UPDATE queue_messages SET dead = 0, attempts = 0, due_ms = 0, last_error = NULL, "
                     f"dead_ms = NULL WHERE {where}", args)
        return lanes
    return op


def discard(queue: str, message_id: int) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        return conn.execute("DELETE FROM queue_messages WHERE queue = ? AND id = ? AND dead = 1",
                            (queue, message_id)).rowcount
    return op


def subscriptions(conn: sqlite3.Connection) -> list[Subscription]:
    return [Subscription(*row) for row in conn.execute(
        "SELECT topic, function_id, settings, condition_function_id, seen_ms FROM queue_subscriptions")]


def save_subscription(sub: Subscription) -> Op:
    def op(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO queue_subscriptions (topic, function_id, settings, condition_function_id, seen_ms) "
                     "VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic, function_id) DO UPDATE SET "
                     "settings = excluded.settings, condition_function_id = excluded.condition_function_id, "
                     "seen_ms = excluded.seen_ms",
                     (sub.topic, sub.function_id, sub.settings, sub.condition_function_id, sub.seen_ms))
    return op


def touch_subscription(topic: str, function_id: str, seen_ms: int) -> Op:
    def op(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE queue_subscriptions SET seen_ms = ? WHERE topic = ? AND function_id = ?",
                     (seen_ms, topic, function_id))
    return op


def drop_subscription(topic: str, function_id: str) -> Callable[[sqlite3.Connection], int]:
    """Forget a subscription and its waiting messages (retention expired; dead letters stay); returns
    how many messages were dropped."""
    def op(conn: sqlite3.Connection) -> int:
        conn.execute("DELETE FROM queue_subscriptions WHERE topic = ? AND function_id = ?", (topic, function_id))
        return conn.execute("DELETE FROM queue_messages WHERE queue = ? AND subscriber = ? AND dead = 0",
                            (topic, function_id)).rowcount
    return op
