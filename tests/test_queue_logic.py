"""The queue's pure decisions: settings, retry schedule, dead letters, lanes and fifo groups."""

from __future__ import annotations

import pytest

from iii_supervisor.errors import EnqueueError
from iii_supervisor.modules.queue.logic import (
    Lane,
    Message,
    QueueSettings,
    group_of,
    is_dead,
    parse_settings,
    retry_delay_ms,
)


def test_backoff_doubles_from_backoff_ms_and_is_capped() -> None:
    s = QueueSettings(backoff_ms=100, max_backoff_ms=1000)
    assert [retry_delay_ms(s, a) for a in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    assert retry_delay_ms(s, 500) == 1000  # no overflow for absurd attempt numbers
    with pytest.raises(ValueError):
        retry_delay_ms(s, 0)


def test_max_retries_counts_retries_after_the_first_attempt() -> None:
    s = QueueSettings(max_retries=2)
    assert s.max_attempts == 3
    assert [is_dead(s, a) for a in (1, 2, 3)] == [False, False, True]
    assert is_dead(QueueSettings(max_retries=0), 1)


def test_settings_are_checked_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"queue_config.max_retries: expected an integer, got 'x'"):
        parse_settings({"max_retries": "x"}, where="queue_config")
    with pytest.raises(ValueError, match=r"queue_config.retries: unknown setting"):
        parse_settings({"retries": 1}, where="queue_config")
    with pytest.raises(ValueError, match=r"queue_config.concurrency: expected an integer, got True"):
        parse_settings({"concurrency": True}, where="queue_config")
    with pytest.raises(ValueError, match=r"concurrency must be > 0"):
        parse_settings({"concurrency": 0}, where="queue_config")
    with pytest.raises(ValueError, match=r"message_group_field"):
        parse_settings({"type": "fifo"}, where="queue_config")
    with pytest.raises(ValueError, match=r"queue_config.type: expected 'standard' or 'fifo', got 'lifo'"):
        parse_settings({"type": "lifo"}, where="queue_config")
    with pytest.raises(ValueError, match=r"expected a table"):
        parse_settings([1], where="queue_config")
    base = QueueSettings(backoff_ms=5)
    assert parse_settings({"max_retries": 7}, where="x", base=base) == QueueSettings(backoff_ms=5, max_retries=7)
    assert parse_settings(None, where="x", base=base) is base


def test_fifo_group_comes_from_the_data_and_is_required() -> None:
    s = QueueSettings(type="fifo", message_group_field="customer")
    assert group_of(s, {"customer": "c1"}, queue="q") == "c1"
    assert group_of(s, {"customer": 7}, queue="q") == "7"
    assert group_of(QueueSettings(), {"x": 1}, queue="q") is None
    with pytest.raises(EnqueueError, match=r"fifo queue 'q' needs the field 'customer'"):
        group_of(s, {"other": 1}, queue="q")
    with pytest.raises(EnqueueError):
        group_of(s, "not a dict", queue="q")


def msg(i: int, group: str | None = None) -> Message:
    return Message(id=i, function_id="f", data={"i": i}, group=group)


def test_standard_lane_respects_concurrency_and_retries_after_the_backoff() -> None:
    lane = Lane("q", QueueSettings(concurrency=2, backoff_ms=100, max_retries=1))
    for i in range(1, 5):
        lane.add(msg(i))
    a, b = lane.take(), lane.take()
    assert (a.id, b.id) == (1, 2) and lane.take() is None  # type: ignore[union-attr]
    failure = lane.failed(a, "boom", now=10.0)  # type: ignore[arg-type]
    assert failure.attempts == 1 and failure.delay_ms == 100 and not failure.dead
    assert lane.next_due() == pytest.approx(10.1)
    assert lane.take().id == 3  # type: ignore[union-attr]
    lane.succeeded(b)  # type: ignore[arg-type]
    lane.succeeded(lane.in_flight[3])
    assert lane.release_due(10.05) == 0
    assert lane.take().id == 4  # type: ignore[union-attr]
    assert lane.release_due(10.1) == 1
    again = lane.take()
    assert again is a and again.attempts == 1
    assert lane.failed(again, "boom twice", now=11.0).dead  # 2 attempts = max_retries 1 + 1
    assert 1 not in lane and len(lane) == 1


def test_fifo_failing_message_holds_its_group_only() -> None:
    lane = Lane("q", QueueSettings(type="fifo", message_group_field="g", concurrency=10, backoff_ms=1000))
    for i, g in [(1, "a"), (2, "a"), (3, "b"), (4, "a"), (5, "b")]:
        lane.add(msg(i, g))
    first = [lane.take(), lane.take(), lane.take()]
    assert [m.id for m in first if m] == [1, 3]  # one per group
    assert first[2] is None
    a1, b3 = first[0], first[1]
    lane.failed(a1, "no", now=0.0)  # type: ignore[arg-type]
    lane.succeeded(b3)  # type: ignore[arg-type]
    b5 = lane.take()
    assert b5 is not None and b5.id == 5 and lane.take() is None  # group a is held by message 1
    lane.succeeded(b5)
    lane.release_due(1.0)
    assert lane.take() is a1  # the same head again, not message 2
    lane.succeeded(a1)  # type: ignore[arg-type]
    assert lane.take().id == 2  # type: ignore[union-attr]
    assert lane.take() is None


def test_fifo_dead_letter_releases_the_group() -> None:
    lane = Lane("q", QueueSettings(type="fifo", message_group_field="g", max_retries=0))
    lane.add(msg(1, "a"))
    lane.add(msg(2, "a"))
    head = lane.take()
    assert head is not None and lane.failed(head, "x", now=0).dead
    assert lane.take().id == 2  # type: ignore[union-attr]


def test_fifo_keeps_id_order_whatever_the_order_of_adding() -> None:
    lane = Lane("q", QueueSettings(type="fifo", message_group_field="g"))
    for i in (3, 1, 2):
        lane.add(msg(i, "a"))
    order = []
    while (m := lane.take()) is not None:
        order.append(m.id)
        lane.succeeded(m)
    assert order == [1, 2, 3]


def test_window_and_backlog() -> None:
    lane = Lane("q", QueueSettings(), window=2)
    assert lane.accepts()
    lane.add(msg(1))
    lane.add(msg(2))
    assert not lane.accepts()
    lane.add(msg(2))  # a refill seeing a held message again: ignored
    assert len(lane) == 2
    lane.backlog = True
    lane.succeeded(lane.take())  # type: ignore[arg-type]
    assert not lane.accepts()  # still a backlog on disk: order is kept by refilling first


def test_returned_message_goes_first_and_drop_removes_waiting_ones() -> None:
    lane = Lane("q", QueueSettings(backoff_ms=10))
    for i in (1, 2, 3):
        lane.add(msg(i))
    m = lane.take()
    lane.returned(m)  # type: ignore[arg-type]
    assert lane.take() is m
    lane.failed(m, "x", now=0)  # type: ignore[arg-type]
    assert lane.drop(1) is m and lane.next_due() is None
    assert lane.drop(2) is not None and lane.drop(99) is None
    assert [lane.take().id] == [3]  # type: ignore[union-attr]
