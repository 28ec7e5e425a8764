"""Rate-limited warnings (iii_supervisor.ratelimit): pure decisions with an injected clock, and
the flusher task on trio's MockClock."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from iii_supervisor.ratelimit import RateLimitedLog, RateLimiter


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_first_line_logged_then_suppressed_within_interval() -> None:
    clock = FakeClock()
    rl = RateLimiter(10.0, clock=clock)
    assert rl.hit("k") == 0
    for _ in range(5):
        clock.now += 1
        assert rl.hit("k") is None
    clock.now += 4.99  # 9.99 s after the first line
    assert rl.hit("k") is None


def test_next_line_after_the_window_carries_the_count() -> None:
    clock = FakeClock()
    rl = RateLimiter(10.0, clock=clock)
    rl.hit("k")
    for _ in range(7):
        rl.hit("k")
    clock.now += 10.0
    assert rl.hit("k") == 7
    assert rl.hit("k") is None  # a new window opened with that line
    clock.now += 10.0
    assert rl.hit("k") == 1


def test_keys_are_independent() -> None:
    clock = FakeClock()
    rl = RateLimiter(10.0, clock=clock)
    assert rl.hit("a") == 0
    assert rl.hit("b") == 0
    assert rl.hit("a") is None
    assert rl.hit(("tuple", 1)) == 0


def test_expired_reports_each_suppressed_count_once() -> None:
    clock = FakeClock()
    rl = RateLimiter(5.0, clock=clock)
    rl.hit("a"), rl.hit("a"), rl.hit("a")
    rl.hit("b")  # nothing suppressed for b
    assert rl.next_due() == 1005.0
    assert rl.expired() == []  # window still open
    clock.now += 5.0
    assert rl.expired() == [("a", 2)]
    assert rl.expired() == []
    assert rl.next_due() is None
    # reported and forgotten: the next line of "a" is logged at once, with nothing to add
    assert rl.hit("a") == 0


def test_quiet_keys_are_forgotten() -> None:
    clock = FakeClock()
    rl = RateLimiter(1.0, clock=clock)
    for i in range(100):
        rl.hit(i)
    clock.now += 1.0
    assert rl.expired() == []
    assert len(rl._windows) == 0


def test_memory_is_bounded_and_evicted_counts_still_reported() -> None:
    clock = FakeClock()
    rl = RateLimiter(60.0, clock=clock, max_keys=4)
    for key in "abcd":
        rl.hit(key)
        rl.hit(key)  # one suppressed each
    for i in range(10_000):  # a flood of distinct keys (e.g. client addresses)
        rl.hit(f"x{i}")
    assert len(rl._windows) <= 4
    assert len(rl._evicted) <= 4
    assert rl.next_due() == clock.now  # evicted counts are due at once
    reported = dict(rl.expired())
    assert {k: reported[k] for k in "abcd"} == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_evicted_key_that_comes_back_reports_its_count_on_its_next_line() -> None:
    clock = FakeClock()
    rl = RateLimiter(60.0, clock=clock, max_keys=1)
    rl.hit("a"), rl.hit("a"), rl.hit("a")
    rl.hit("b")  # evicts a (2 suppressed)
    assert rl.hit("a") == 2


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"interval": -1}, {"max_keys": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


def test_rate_limited_log_appends_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("test.rl"), 10.0, clock=clock)
    with caplog.at_level(logging.WARNING, "test.rl"):
        assert limited.warning("refused", "refused a connection: %s", "bad token 1")
        for i in range(2, 1001):
            assert not limited.warning("refused", "refused a connection: %s", f"bad token {i}")
        clock.now += 10
        assert limited.warning("refused", "refused a connection: %s", "bad token 1001")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a connection: bad token 1",
        "refused a connection: bad token 1001 (999 similar line(s) suppressed)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_flusher_reports_a_flood_that_stopped(caplog: pytest.LogCaptureFixture) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    lines: list[float] = []

    async def main() -> None:
        limited = RateLimitedLog(logging.getLogger("test.rl.flush"), 10.0, clock=trio.current_time)
        with trio.fail_after(100):  # virtual seconds
            async with trio.open_nursery() as nursery:
                await nursery.start(limited.run)
                await trio.sleep(3)  # the flusher sleeps while nothing is suppressed
                for _ in range(50):
                    limited.warning("proto", "protocol error")
                start = trio.current_time()
                while not caplog.records[1:]:
                    await trio.sleep(0.5)
                lines.append(trio.current_time() - start)
                for _ in range(3):  # a second flood, later: reported again
                    limited.warning("proto", "protocol error")
                await trio.sleep(25)
                nursery.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, "test.rl.flush"):
        trio.run(main, clock=clock)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "protocol error",
        "proto: 49 similar line(s) suppressed in the last 10s",
        "protocol error",
        "proto: 2 similar line(s) suppressed in the last 10s",
    ]
    # reported when the window ended (the poll above may see it up to one step late: trio
    # orders tasks that wake at the same instant at random)
    assert len(lines) == 1 and 10 <= lines[0] <= 10.5, lines
